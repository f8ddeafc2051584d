//! Certificate profiles and issuance.
//!
//! A profile is a list of small rules applied to rcgen parameters (step-ca's "modifiers"):
//! validity (backdated, capped by the issuer), serial (random, positive, 128 bits), subject,
//! key usage, EKU, SANs, CRL distribution point and OCSP AIA. Each rule is a function below.

use std::net::IpAddr;

use der::Encode as _;
use rand::RngCore as _;
use rcgen::{
    CertificateParams, CrlDistributionPoint, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use crate::authority::{Issuer, BACKDATE_SECS};
use crate::csr::{KeyType, SubjectKey, VerifiedCsr};
use crate::secret::PrivateKey;
use crate::time::to_datetime;

/// Why issuance failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// The issuer has expired (or expires before the certificate could start).
    #[error("issuing CA has expired")]
    IssuerExpired,
    /// A SAN value cannot be encoded (e.g. a DNS name that is not IA5).
    #[error("invalid subject alternative name `{0}`")]
    InvalidName(String),
    /// Key generation is not available for this key type (ring cannot generate RSA keys).
    #[error("server-side generation of {0} keys is not supported")]
    KeyGenerationUnsupported(KeyType),
    /// rcgen refused to build or sign the certificate.
    #[error("signing failed: {0}")]
    Signing(rcgen::Error),
    /// The CA key's signer failed (e.g. the token is unreachable).
    #[error(transparent)]
    Sign(#[from] crate::signer::SignError),
}

impl From<rcgen::Error> for IssueError {
    fn from(e: rcgen::Error) -> Self {
        match crate::signer::take_sign_error(&e) {
            Some(sign) => IssueError::Sign(sign),
            None => IssueError::Signing(e),
        }
    }
}

/// An issued certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// DER encoding.
    pub der: Vec<u8>,
    /// Serial number, lowercase hex without separators.
    pub serial: String,
    /// notBefore, unix seconds.
    pub not_before: i64,
    /// notAfter, unix seconds.
    pub not_after: i64,
}

impl IssuedCertificate {
    /// PEM encoding.
    pub fn pem(&self) -> String {
        crate::authority::to_pem("CERTIFICATE", &self.der)
    }
}

/// Where relying parties find revocation information. `base_url` is the service's public URL
/// (`https://host:port`), without a trailing slash.
#[derive(Debug, Clone, Default)]
pub struct RevocationUrls {
    /// When set, certificates carry a CRL DP `{base}/v1/ca/crl/{issuer_id}` and an OCSP AIA
    /// `{base}/v1/ca/ocsp`.
    pub base_url: Option<String>,
}

/// Device client certificate profile.
#[derive(Debug, Clone)]
pub struct DeviceProfile<'a> {
    /// The device id: subject CN and SAN URI `urn:provisiond:device:{id}`.
    pub device_id: &'a str,
    /// Requested lifetime; capped by the issuer's notAfter.
    pub validity_secs: i64,
    /// CRL / OCSP locations.
    pub urls: &'a RevocationUrls,
}

/// Profile of a certificate whose subject is its own serial: AWS IoT fleet provisioning issues
/// a certificate before the device has a name (API.md A30 "AWS personality"). Otherwise the
/// device profile: clientAuth, digitalSignature, CA:FALSE, AKI, CRL DP and OCSP AIA; no SAN.
#[derive(Debug, Clone)]
pub struct SerialNamedProfile<'a> {
    /// Requested lifetime; capped by the issuer's notAfter.
    pub validity_secs: i64,
    /// CRL / OCSP locations.
    pub urls: &'a RevocationUrls,
}

/// Server (TLS) certificate profile: the service's own certificate, brokers, gateways.
#[derive(Debug, Clone)]
pub struct ServerProfile<'a> {
    /// Subject CN.
    pub common_name: &'a str,
    /// DNS SANs.
    pub dns_names: &'a [String],
    /// IP SANs.
    pub ip_addresses: &'a [IpAddr],
    /// Requested lifetime; capped by the issuer's notAfter.
    pub validity_secs: i64,
}

/// Issues a device client certificate for a verified CSR.
pub fn issue_device(
    issuer: &Issuer,
    csr: &VerifiedCsr,
    profile: &DeviceProfile<'_>,
    now: i64,
) -> Result<IssuedCertificate, IssueError> {
    issue_device_for_key(issuer, csr.subject_key(), profile, now)
}

/// Issues a device client certificate for a public key (server-generated keys, renewals).
pub fn issue_device_for_key(
    issuer: &Issuer,
    key: &SubjectKey,
    profile: &DeviceProfile<'_>,
    now: i64,
) -> Result<IssuedCertificate, IssueError> {
    let mut params = CertificateParams::default();
    let (not_before, not_after) = validity(&mut params, issuer, now, profile.validity_secs)?;
    let serial = serial(&mut params);
    subject(&mut params, profile.device_id);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let urn = format!("urn:provisiond:device:{}", profile.device_id);
    params.subject_alt_names = vec![SanType::URI(
        urn.try_into().map_err(|_| IssueError::InvalidName(profile.device_id.to_owned()))?,
    )];
    revocation_pointers(&mut params, issuer, profile.urls)?;
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(key, issuer.rcgen())?;
    Ok(IssuedCertificate { der: cert.der().to_vec(), serial, not_before, not_after })
}

/// Issues a client certificate for `key` whose subject CN is its serial in lowercase hex and
/// which names no device (no SAN): the binding to a device is recorded by the registry, not in
/// the certificate.
pub fn issue_serial_named(
    issuer: &Issuer,
    key: &SubjectKey,
    profile: &SerialNamedProfile<'_>,
    now: i64,
) -> Result<IssuedCertificate, IssueError> {
    let mut params = CertificateParams::default();
    let (not_before, not_after) = validity(&mut params, issuer, now, profile.validity_secs)?;
    let serial = serial(&mut params);
    subject(&mut params, &serial);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    revocation_pointers(&mut params, issuer, profile.urls)?;
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(key, issuer.rcgen())?;
    Ok(IssuedCertificate { der: cert.der().to_vec(), serial, not_before, not_after })
}

/// Issues a TLS server certificate (serverAuth, DNS/IP SANs from the profile only).
pub fn issue_server(
    issuer: &Issuer,
    key: &SubjectKey,
    profile: &ServerProfile<'_>,
    now: i64,
) -> Result<IssuedCertificate, IssueError> {
    let mut params = CertificateParams::default();
    let (not_before, not_after) = validity(&mut params, issuer, now, profile.validity_secs)?;
    let serial = serial(&mut params);
    subject(&mut params, profile.common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let mut sans = Vec::new();
    for name in profile.dns_names {
        let ia5 = name.clone().try_into().map_err(|_| IssueError::InvalidName(name.clone()))?;
        sans.push(SanType::DnsName(ia5));
    }
    sans.extend(profile.ip_addresses.iter().copied().map(SanType::IpAddress));
    params.subject_alt_names = sans;
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(key, issuer.rcgen())?;
    Ok(IssuedCertificate { der: cert.der().to_vec(), serial, not_before, not_after })
}

/// Generates a key pair on the server (bundles, the service's own TLS key). Returns the PKCS#8
/// private key and the public key to certify. RSA generation is not offered (ring cannot).
pub fn generate_key(key_type: KeyType) -> Result<(PrivateKey, SubjectKey), IssueError> {
    let alg = match key_type {
        KeyType::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyType::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeyType::Ed25519 => &rcgen::PKCS_ED25519,
        other => return Err(IssueError::KeyGenerationUnsupported(other)),
    };
    let pair = KeyPair::generate_for(alg)?;
    let public = SubjectKey::new(key_type, rcgen::PublicKeyData::der_bytes(&pair).to_vec());
    Ok((PrivateKey::from_pkcs8_der(pair.serialize_der()), public))
}

/// A random positive 128-bit serial: 16 bytes from the CSPRNG with the top byte forced into
/// 0x40..=0x7f, so the integer is positive, always 16 bytes long (no leading zero in hex) and
/// carries 126 random bits.
pub fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x3f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// Canonical serial text: lowercase hex of the integer's bytes without leading zero bytes.
pub fn serial_hex(bytes: &[u8]) -> String {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len().saturating_sub(1));
    hex::encode(&bytes[first..])
}

fn validity(
    params: &mut CertificateParams,
    issuer: &Issuer,
    now: i64,
    validity_secs: i64,
) -> Result<(i64, i64), IssueError> {
    let not_after = now.saturating_add(validity_secs.max(1)).min(issuer.not_after());
    if not_after <= now {
        return Err(IssueError::IssuerExpired);
    }
    let not_before = (now - BACKDATE_SECS).max(issuer.not_before());
    params.not_before = to_datetime(not_before);
    params.not_after = to_datetime(not_after);
    Ok((not_before, not_after))
}

fn serial(params: &mut CertificateParams) -> String {
    let serial = random_serial();
    let text = serial_hex(&serial.to_bytes());
    params.serial_number = Some(serial);
    text
}

fn subject(params: &mut CertificateParams, common_name: &str) {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
}

fn revocation_pointers(
    params: &mut CertificateParams,
    issuer: &Issuer,
    urls: &RevocationUrls,
) -> Result<(), IssueError> {
    let Some(base) = urls.base_url.as_deref() else {
        return Ok(());
    };
    let base = base.trim_end_matches('/');
    params.crl_distribution_points =
        vec![CrlDistributionPoint { uris: vec![format!("{base}/v1/ca/crl/{}", issuer.id())] }];
    params.custom_extensions.push(ocsp_aia(&format!("{base}/v1/ca/ocsp"))?);
    Ok(())
}

/// authorityInfoAccess with one OCSP access description (RFC 5280 §4.2.2.1).
fn ocsp_aia(url: &str) -> Result<CustomExtension, IssueError> {
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::{AccessDescription, AuthorityInfoAccessSyntax};

    let location =
        der::asn1::Ia5String::new(url).map_err(|_| IssueError::InvalidName(url.to_owned()))?;
    let aia = AuthorityInfoAccessSyntax(vec![AccessDescription {
        access_method: const_oid::db::rfc5280::ID_AD_OCSP,
        access_location: GeneralName::UniformResourceIdentifier(location),
    }]);
    let content = aia.to_der().map_err(|_| IssueError::InvalidName(url.to_owned()))?;
    Ok(CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 1], content))
}

#[cfg(test)]
mod tests {
    use x509_parser::prelude::{FromDer, X509Certificate};

    use super::*;
    use crate::authority::{create_intermediate, create_root, CaKeyAlgorithm};
    use crate::csr::CsrPolicy;

    const NOW: i64 = 1_800_000_000;
    const YEAR: i64 = 365 * 86400;

    fn ca() -> Issuer {
        let root = create_root("R", CaKeyAlgorithm::P256, NOW - 10, 10 * YEAR).unwrap();
        create_intermediate(&root, "I", CaKeyAlgorithm::P256, NOW - 10, 2 * YEAR).unwrap()
    }

    fn device_csr(id: &str) -> VerifiedCsr {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        subject(&mut params, id);
        let csr = params.serialize_request(&key).unwrap();
        VerifiedCsr::parse(csr.der(), &CsrPolicy::device(id)).unwrap()
    }

    #[test]
    fn device_certificates_follow_the_profile() {
        let issuer = ca();
        let urls = RevocationUrls { base_url: Some("https://pki.example:8443".into()) };
        let profile = DeviceProfile { device_id: "dev-1", validity_secs: YEAR, urls: &urls };
        let issued = issue_device(&issuer, &device_csr("dev-1"), &profile, NOW).unwrap();
        let (_, cert) = X509Certificate::from_der(&issued.der).unwrap();
        assert_eq!(issued.not_before, NOW - BACKDATE_SECS);
        assert_eq!(cert.validity().not_before.timestamp(), NOW - BACKDATE_SECS);
        assert_eq!(issued.serial.len(), 32);
        assert_eq!(cert.raw_serial_as_string().replace(':', ""), issued.serial);
        assert!(!cert.is_ca());
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        assert!(cert.extended_key_usage().unwrap().unwrap().value.client_auth);
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(format!("{:?}", san.general_names[0]), "URI(\"urn:provisiond:device:dev-1\")");
        let text = format!("{:?}", cert.extensions());
        assert!(text.contains(&format!("https://pki.example:8443/v1/ca/crl/{}", issuer.id())));
        assert!(text.contains("https://pki.example:8443/v1/ca/ocsp"));
    }

    #[test]
    fn validity_is_capped_by_the_issuer() {
        let issuer = ca();
        let urls = RevocationUrls::default();
        let profile = DeviceProfile { device_id: "d", validity_secs: 50 * YEAR, urls: &urls };
        let issued = issue_device(&issuer, &device_csr("d"), &profile, NOW).unwrap();
        assert_eq!(issued.not_after, issuer.not_after());
        let late = issue_device(&issuer, &device_csr("d"), &profile, issuer.not_after() + 1);
        assert!(matches!(late, Err(IssueError::IssuerExpired)));
    }

    #[test]
    fn serials_are_random_positive_and_128_bits() {
        let a = serial_hex(&random_serial().to_bytes());
        let b = serial_hex(&random_serial().to_bytes());
        assert_ne!(a, b);
        for s in [a, b] {
            assert_eq!(s.len(), 32);
            assert!(matches!(s.as_bytes()[0], b'4'..=b'7'));
        }
        assert_eq!(serial_hex(&[0, 0, 0x12]), "12");
    }

    #[test]
    fn serial_named_certificates_carry_their_serial_as_cn_and_no_san() {
        let issuer = ca();
        let (_, public) = generate_key(KeyType::P256).unwrap();
        let urls = RevocationUrls { base_url: Some("https://pki.example".into()) };
        let profile = SerialNamedProfile { validity_secs: YEAR, urls: &urls };
        let issued = issue_serial_named(&issuer, &public, &profile, NOW).unwrap();
        let (_, cert) = X509Certificate::from_der(&issued.der).unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap().as_str().unwrap();
        assert_eq!(cn, issued.serial);
        assert!(cert.subject_alternative_name().unwrap().is_none(), "no SAN");
        assert!(cert.extended_key_usage().unwrap().unwrap().value.client_auth);
        assert!(!cert.is_ca());
        assert!(format!("{:?}", cert.extensions()).contains("https://pki.example/v1/ca/ocsp"));
    }

    #[test]
    fn generated_keys_certify() {
        let issuer = ca();
        let (private, public) = generate_key(KeyType::P256).unwrap();
        let urls = RevocationUrls::default();
        let profile = DeviceProfile { device_id: "b", validity_secs: YEAR, urls: &urls };
        let issued = issue_device_for_key(&issuer, &public, &profile, NOW).unwrap();
        let pair = KeyPair::try_from(private.expose_secret()).unwrap();
        let (_, cert) = X509Certificate::from_der(&issued.der).unwrap();
        assert_eq!(cert.public_key().subject_public_key.data.as_ref(), pair.public_key_raw());
        assert!(generate_key(KeyType::Rsa2048).is_err());
    }
}
