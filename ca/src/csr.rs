//! PKCS#10 certificate signing requests (RFC 2986): parse, verify proof of possession, apply the
//! request profile.
//!
//! Invariant: a [`VerifiedCsr`] exists only for a request whose signature verified under its own
//! public key, whose key type the policy allows, and whose subject and requested extensions the
//! policy accepts. Every refusal is a distinct [`CsrError`]; no input panics.

use std::collections::BTreeSet;

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::der_parser::oid;
use x509_parser::oid_registry;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey as ParsedKey;

/// Largest accepted request, PEM or DER (a 4096-bit RSA CSR is about 1.7 KiB).
pub const MAX_CSR_LEN: usize = 16 * 1024;

/// Why a request was refused. Messages are safe to show to the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum CsrError {
    /// The subject common name differs from the device / registration id.
    #[error("CSR subject CN must equal the device id `{expected}`")]
    CommonNameMismatch {
        /// the id the CN had to equal
        expected: String,
    },
    /// The request has no subject common name, or more than one.
    #[error("CSR subject must contain exactly one CN")]
    CommonNameMissing,
    /// The input is empty.
    #[error("CSR is empty")]
    Empty,
    /// The RSA key is longer than 4096 bits.
    #[error("RSA key of {bits} bits is too large (maximum 4096)")]
    KeyTooLarge {
        /// modulus size
        bits: usize,
    },
    /// The RSA key is shorter than 2048 bits.
    #[error("RSA key of {bits} bits is too small (minimum 2048)")]
    KeyTooSmall {
        /// modulus size
        bits: usize,
    },
    /// The key type is valid but not allowed by this enrollment's policy.
    #[error("key type {key_type} is not allowed here")]
    KeyTypeNotAllowed {
        /// the request's key type
        key_type: KeyType,
    },
    /// Not PEM `CERTIFICATE REQUEST`, not DER PKCS#10, or trailing garbage.
    #[error("CSR is not a valid PEM or DER PKCS#10 request")]
    Malformed,
    /// The signature does not verify under the request's own key (no proof of possession).
    #[error("CSR signature is invalid (no proof of possession)")]
    SignatureInvalid,
    /// A subject alternative name was requested; provisiond sets SANs itself.
    #[error("CSR must not request subject alternative names")]
    SubjectAltNameRequested,
    /// The input exceeds [`MAX_CSR_LEN`].
    #[error("CSR exceeds {MAX_CSR_LEN} bytes")]
    TooLarge,
    /// An extension other than SAN was requested.
    #[error("CSR requests extension {oid}, which the profile does not allow")]
    UnexpectedExtension {
        /// dotted OID of the extension
        oid: String,
    },
    /// The public key algorithm (or curve) is not supported.
    #[error("unsupported public key algorithm {oid}")]
    UnsupportedKey {
        /// dotted OID of the algorithm or curve
        oid: String,
    },
    /// The signature algorithm is not one of ECDSA-SHA256/384, Ed25519, RSA-PKCS#1-SHA2.
    #[error("unsupported CSR signature algorithm {oid}")]
    UnsupportedSignatureAlgorithm {
        /// dotted OID of the algorithm
        oid: String,
    },
}

/// Device key types (names as in API.md A13 `allowed_key_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum KeyType {
    /// Ed25519.
    Ed25519,
    /// ECDSA on NIST P-256.
    P256,
    /// ECDSA on NIST P-384.
    P384,
    /// RSA, 2048 ≤ bits < 3072.
    Rsa2048,
    /// RSA, 3072 ≤ bits < 4096.
    Rsa3072,
    /// RSA, 4096 bits.
    Rsa4096,
}

impl KeyType {
    /// Every key type.
    pub const ALL: [KeyType; 6] = [
        KeyType::P256,
        KeyType::P384,
        KeyType::Ed25519,
        KeyType::Rsa2048,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
    ];

    /// Wire name (`p256`, `ed25519`, `rsa2048`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Ed25519 => "ed25519",
            KeyType::P256 => "p256",
            KeyType::P384 => "p384",
            KeyType::Rsa2048 => "rsa2048",
            KeyType::Rsa3072 => "rsa3072",
            KeyType::Rsa4096 => "rsa4096",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    fn rcgen_alg(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyType::Ed25519 => &rcgen::PKCS_ED25519,
            KeyType::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            // Only the SubjectPublicKeyInfo algorithm (rsaEncryption) is taken from this.
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

impl std::fmt::Display for KeyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with extensions the request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestedExtensions {
    /// Ignore them: the profile sets every extension (server certificates: SANs come from the
    /// API body, never from the CSR — API.md A23).
    Ignore,
    /// Refuse any (device certificates).
    Reject,
}

/// The request profile a CSR must satisfy.
#[derive(Debug, Clone)]
pub struct CsrPolicy {
    /// The subject CN must equal this, when set.
    pub expected_cn: Option<String>,
    /// Key types accepted.
    pub allowed_keys: BTreeSet<KeyType>,
    /// Handling of requested extensions.
    pub requested_extensions: RequestedExtensions,
}

impl CsrPolicy {
    /// Device profile: CN = `device_id`, every key type, no requested extensions.
    pub fn device(device_id: &str) -> Self {
        Self {
            expected_cn: Some(device_id.to_owned()),
            allowed_keys: KeyType::ALL.into_iter().collect(),
            requested_extensions: RequestedExtensions::Reject,
        }
    }

    /// Server profile: any CN, every key type, requested extensions ignored.
    pub fn server() -> Self {
        Self {
            expected_cn: None,
            allowed_keys: KeyType::ALL.into_iter().collect(),
            requested_extensions: RequestedExtensions::Ignore,
        }
    }

    /// Profile of a request whose certificate takes nothing from it but the key (AWS IoT
    /// `CreateCertificateFromCsr`: the subject is the serial, API.md A30): any CN, requested
    /// extensions ignored.
    pub fn key_only() -> Self {
        Self::server()
    }

    /// Restricts the accepted key types.
    pub fn with_allowed_keys(mut self, keys: impl IntoIterator<Item = KeyType>) -> Self {
        self.allowed_keys = keys.into_iter().collect();
        self
    }
}

/// A subject public key: the SubjectPublicKeyInfo's key bits and algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectKey {
    key_type: KeyType,
    raw: Vec<u8>,
}

impl SubjectKey {
    pub(crate) fn new(key_type: KeyType, raw: Vec<u8>) -> Self {
        Self { key_type, raw }
    }

    /// The key type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The key's fingerprint (see [`key_fingerprint`]).
    pub fn fingerprint(&self) -> String {
        key_fingerprint(&self.raw)
    }
}

/// Lowercase hex SHA-256 of a public key's bits (the SubjectPublicKeyInfo's BIT STRING): one
/// key has one fingerprint, whichever request or certificate carries it.
pub fn key_fingerprint(public_key_bits: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(public_key_bits))
}

/// The [`key_fingerprint`] of a DER certificate's subject key (`None` when it does not parse).
pub fn certificate_key_fingerprint(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    Some(key_fingerprint(&cert.public_key().subject_public_key.data))
}

impl rcgen::PublicKeyData for SubjectKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.key_type.rcgen_alg()
    }
}

/// A request that passed every check of its [`CsrPolicy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCsr {
    key: SubjectKey,
    common_name: Option<String>,
    der: Vec<u8>,
}

impl VerifiedCsr {
    /// Parses PEM or DER, verifies the signature and applies `policy`.
    pub fn parse(input: &[u8], policy: &CsrPolicy) -> Result<Self, CsrError> {
        if input.len() > MAX_CSR_LEN {
            return Err(CsrError::TooLarge);
        }
        if input.iter().all(u8::is_ascii_whitespace) {
            return Err(CsrError::Empty);
        }
        let der = to_der(input)?;
        let (rest, csr) =
            X509CertificationRequest::from_der(&der).map_err(|_| CsrError::Malformed)?;
        if !rest.is_empty() {
            return Err(CsrError::Malformed);
        }
        check_signature_algorithm(&csr)?;
        let key = subject_key(&csr)?;
        if !policy.allowed_keys.contains(&key.key_type) {
            return Err(CsrError::KeyTypeNotAllowed { key_type: key.key_type });
        }
        csr.verify_signature().map_err(|_| CsrError::SignatureInvalid)?;
        let common_name = common_name(&csr)?;
        if let Some(expected) = &policy.expected_cn {
            if common_name.as_deref() != Some(expected.as_str()) {
                return Err(CsrError::CommonNameMismatch { expected: expected.clone() });
            }
        }
        if policy.requested_extensions == RequestedExtensions::Reject {
            check_no_extensions(&csr)?;
        }
        Ok(Self { key, common_name, der: der.clone() })
    }

    /// The request's public key.
    pub fn subject_key(&self) -> &SubjectKey {
        &self.key
    }

    /// The key type.
    pub fn key_type(&self) -> KeyType {
        self.key.key_type
    }

    /// The subject CN, if exactly one was present.
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }

    /// The request in DER form (for idempotency comparison).
    pub fn der(&self) -> &[u8] {
        &self.der
    }
}

#[cfg(test)]
mod fingerprint_tests {
    use super::*;

    #[test]
    fn a_key_has_the_same_fingerprint_in_its_request_and_its_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["dev-1".into()]).unwrap();
        let csr = params.serialize_request(&key).unwrap();
        let verified = VerifiedCsr::parse(csr.der(), &CsrPolicy::server()).unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            Some(verified.subject_key().fingerprint()),
            certificate_key_fingerprint(cert.der())
        );
        let other = rcgen::KeyPair::generate().unwrap();
        let cert2 = params.self_signed(&other).unwrap();
        assert_ne!(
            certificate_key_fingerprint(cert.der()),
            certificate_key_fingerprint(cert2.der())
        );
    }
}

fn to_der(input: &[u8]) -> Result<Vec<u8>, CsrError> {
    let trimmed = input.trim_ascii_start();
    if trimmed.starts_with(b"-----BEGIN") {
        let block = pem::parse(trimmed).map_err(|_| CsrError::Malformed)?;
        if !matches!(block.tag(), "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST") {
            return Err(CsrError::Malformed);
        }
        Ok(block.into_contents())
    } else {
        Ok(input.to_vec())
    }
}

fn check_signature_algorithm(csr: &X509CertificationRequest<'_>) -> Result<(), CsrError> {
    let alg = &csr.signature_algorithm.algorithm;
    let allowed = [
        oid_registry::OID_SIG_ECDSA_WITH_SHA256,
        oid_registry::OID_SIG_ECDSA_WITH_SHA384,
        oid_registry::OID_SIG_ED25519,
        oid_registry::OID_PKCS1_SHA256WITHRSA,
        oid_registry::OID_PKCS1_SHA384WITHRSA,
        oid_registry::OID_PKCS1_SHA512WITHRSA,
    ];
    if allowed.contains(alg) {
        Ok(())
    } else {
        Err(CsrError::UnsupportedSignatureAlgorithm { oid: alg.to_id_string() })
    }
}

fn subject_key(csr: &X509CertificationRequest<'_>) -> Result<SubjectKey, CsrError> {
    let spki = &csr.certification_request_info.subject_pki;
    let alg_oid = &spki.algorithm.algorithm;
    let key_type = if *alg_oid == oid_registry::OID_SIG_ED25519 {
        KeyType::Ed25519
    } else if *alg_oid == oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or(CsrError::Malformed)?;
        if curve == oid_registry::OID_EC_P256 {
            KeyType::P256
        } else if curve == oid_registry::OID_NIST_EC_P384 {
            KeyType::P384
        } else {
            return Err(CsrError::UnsupportedKey { oid: curve.to_id_string() });
        }
    } else if *alg_oid == oid_registry::OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(ParsedKey::RSA(rsa)) => rsa.key_size(),
            _ => return Err(CsrError::Malformed),
        };
        match bits {
            b if b < 2048 => return Err(CsrError::KeyTooSmall { bits }),
            b if b < 3072 => KeyType::Rsa2048,
            b if b < 4096 => KeyType::Rsa3072,
            4096 => KeyType::Rsa4096,
            _ => return Err(CsrError::KeyTooLarge { bits }),
        }
    } else {
        return Err(CsrError::UnsupportedKey { oid: alg_oid.to_id_string() });
    };
    Ok(SubjectKey::new(key_type, spki.subject_public_key.data.to_vec()))
}

fn common_name(csr: &X509CertificationRequest<'_>) -> Result<Option<String>, CsrError> {
    let subject = &csr.certification_request_info.subject;
    let mut cns = subject.iter_common_name();
    let Some(first) = cns.next() else {
        return Ok(None);
    };
    if cns.next().is_some() {
        return Err(CsrError::CommonNameMissing);
    }
    first.as_str().map(|s| Some(s.to_owned())).map_err(|_| CsrError::Malformed)
}

fn check_no_extensions(csr: &X509CertificationRequest<'_>) -> Result<(), CsrError> {
    use x509_parser::cri_attributes::ParsedCriAttribute;

    let san = oid!(2.5.29 .17);
    for attr in csr.certification_request_info.iter_attributes() {
        // Other attributes (challengePassword, …) carry no certificate content.
        if let ParsedCriAttribute::ExtensionRequest(req) = attr.parsed_attribute() {
            if req.extensions.iter().any(|e| e.oid == san) {
                return Err(CsrError::SubjectAltNameRequested);
            }
            if let Some(ext) = req.extensions.first() {
                return Err(CsrError::UnexpectedExtension { oid: ext.oid.to_id_string() });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_for(cn: &str, alg: &'static rcgen::SignatureAlgorithm) -> (Vec<u8>, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let csr = params.serialize_request(&key).unwrap();
        (csr.der().to_vec(), key)
    }

    #[test]
    fn accepts_p256_p384_ed25519_in_pem_and_der() {
        for alg in
            [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519]
        {
            let (der, _) = csr_for("dev-1", alg);
            let v = VerifiedCsr::parse(&der, &CsrPolicy::device("dev-1")).unwrap();
            assert_eq!(v.common_name(), Some("dev-1"));
            let pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
            VerifiedCsr::parse(pem.as_bytes(), &CsrPolicy::device("dev-1")).unwrap();
        }
    }

    #[test]
    fn each_violation_is_a_distinct_error() {
        let (der, _) = csr_for("dev-1", &rcgen::PKCS_ECDSA_P256_SHA256);
        let policy = CsrPolicy::device("dev-2");
        assert_eq!(
            VerifiedCsr::parse(&der, &policy),
            Err(CsrError::CommonNameMismatch { expected: "dev-2".into() })
        );
        let mut flipped = der.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x01;
        assert_eq!(
            VerifiedCsr::parse(&flipped, &CsrPolicy::device("dev-1")),
            Err(CsrError::SignatureInvalid)
        );
        assert_eq!(VerifiedCsr::parse(b"", &policy), Err(CsrError::Empty));
        assert_eq!(VerifiedCsr::parse(b"garbage", &policy), Err(CsrError::Malformed));
        assert_eq!(VerifiedCsr::parse(&vec![b'A'; 20_000], &policy), Err(CsrError::TooLarge));
        let only_p384 = CsrPolicy::device("dev-1").with_allowed_keys([KeyType::P384]);
        assert_eq!(
            VerifiedCsr::parse(&der, &only_p384),
            Err(CsrError::KeyTypeNotAllowed { key_type: KeyType::P256 })
        );
    }

    #[test]
    fn requested_sans_and_extensions_are_refused_for_devices_but_ignored_for_servers() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, "dev-1");
        let der = params.serialize_request(&key).unwrap().der().to_vec();
        assert_eq!(
            VerifiedCsr::parse(&der, &CsrPolicy::device("dev-1")),
            Err(CsrError::SubjectAltNameRequested)
        );
        VerifiedCsr::parse(&der, &CsrPolicy::server()).unwrap();

        let mut ca = rcgen::CertificateParams::default();
        ca.distinguished_name = rcgen::DistinguishedName::new();
        ca.distinguished_name.push(rcgen::DnType::CommonName, "dev-1");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let der = ca.serialize_request(&key).unwrap().der().to_vec();
        assert_eq!(
            VerifiedCsr::parse(&der, &CsrPolicy::device("dev-1")),
            Err(CsrError::UnexpectedExtension { oid: "2.5.29.19".into() })
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_give_typed_errors(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = VerifiedCsr::parse(&bytes, &CsrPolicy::device("x"));
        }

        #[test]
        fn mutated_valid_csrs_never_panic(pos in 0usize..400, val in proptest::num::u8::ANY) {
            let (mut der, _) = csr_for("dev-1", &rcgen::PKCS_ECDSA_P256_SHA256);
            let i = pos % der.len();
            der[i] = val;
            let _ = VerifiedCsr::parse(&der, &CsrPolicy::device("dev-1"));
        }
    }
}
