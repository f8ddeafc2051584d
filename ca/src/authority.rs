//! The CA hierarchy: a self-signed root and intermediates under it.
//!
//! Invariants: an [`Issuer`] always holds a certificate and the private key that matches it
//! (checked on construction); a root has pathLen 1, an intermediate pathLen 0; both carry
//! keyCertSign + cRLSign (critical) and an SKI; an intermediate's validity lies inside its root's.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose,
    SignatureAlgorithm,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::issue::random_serial;
use crate::secret::PrivateKey;
use crate::signer::{
    take_sign_error, RcgenKey, SignError, SignatureScheme, Signer, SoftwareSigner,
};
use crate::time::to_datetime;

/// Clock skew allowance: certificates are valid from five minutes before `now`.
pub const BACKDATE_SECS: i64 = 300;

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// The certificate is not a CA certificate (basicConstraints CA:TRUE missing).
    #[error("certificate is not a CA certificate")]
    NotACa,
    /// The certificate does not chain to the given root (issuer name or signature).
    #[error("certificate is not signed by the given root")]
    NotSignedByRoot,
    /// The certificate could not be parsed.
    #[error("certificate is not valid PEM/DER X.509")]
    InvalidCertificate,
    /// The private key could not be parsed or is of an unsupported type.
    #[error("private key is not a supported PKCS#8 key")]
    InvalidKey,
    /// The private key does not belong to the certificate.
    #[error("private key does not match the certificate")]
    KeyMismatch,
    /// The root expires before the requested intermediate would start.
    #[error("issuer is expired or expires too soon")]
    IssuerExpired,
    /// rcgen refused to build or sign (should not happen with valid inputs).
    #[error("signing failed: {0}")]
    Signing(rcgen::Error),
    /// The CA key's signer failed (e.g. the token is unreachable).
    #[error(transparent)]
    Sign(#[from] SignError),
}

impl From<rcgen::Error> for AuthorityError {
    fn from(e: rcgen::Error) -> Self {
        match take_sign_error(&e) {
            Some(sign) => AuthorityError::Sign(sign),
            None => AuthorityError::Signing(e),
        }
    }
}

/// Algorithm of a CA key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CaKeyAlgorithm {
    /// ECDSA P-256 with SHA-256 (default).
    #[default]
    P256,
    /// ECDSA P-384 with SHA-384.
    P384,
}

impl CaKeyAlgorithm {
    /// The signature scheme of keys of this algorithm.
    pub fn scheme(self) -> SignatureScheme {
        match self {
            CaKeyAlgorithm::P256 => SignatureScheme::EcdsaP256Sha256,
            CaKeyAlgorithm::P384 => SignatureScheme::EcdsaP384Sha384,
        }
    }
}

/// A CA certificate with its signer: the thing that signs certificates, CRLs and OCSP
/// responses.
pub struct Issuer {
    cert_der: Vec<u8>,
    signer: Arc<dyn Signer>,
    rcgen: rcgen::Issuer<'static, RcgenKey>,
    ski: Vec<u8>,
    subject_der: Vec<u8>,
    public_key_bits: Vec<u8>,
    not_before: i64,
    not_after: i64,
    is_self_signed: bool,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("id", &self.id())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// Loads a CA from its certificate (DER) and PKCS#8 key, checking that they match.
    pub fn from_der(cert_der: &[u8], key: &PrivateKey) -> Result<Self, AuthorityError> {
        let signer = SoftwareSigner::from_pkcs8(key).ok_or(AuthorityError::InvalidKey)?;
        Self::with_signer(cert_der, Arc::new(signer))
    }

    /// A CA from its certificate (DER) and a signer holding its key, checking that they match.
    pub fn with_signer(cert_der: &[u8], signer: Arc<dyn Signer>) -> Result<Self, AuthorityError> {
        let (rest, cert) =
            X509Certificate::from_der(cert_der).map_err(|_| AuthorityError::InvalidCertificate)?;
        if !rest.is_empty() {
            return Err(AuthorityError::InvalidCertificate);
        }
        if !cert.is_ca() {
            return Err(AuthorityError::NotACa);
        }
        let public_key_bits = cert.public_key().subject_public_key.data.to_vec();
        if public_key_bits != signer.public_key() {
            return Err(AuthorityError::KeyMismatch);
        }
        let ski = ski_of(&cert).ok_or(AuthorityError::InvalidCertificate)?;
        let subject_der = cert.subject().as_raw().to_vec();
        let is_self_signed = cert.subject().as_raw() == cert.issuer().as_raw();
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        let rcgen =
            rcgen::Issuer::from_ca_cert_der(&cert_der.to_vec().into(), RcgenKey(signer.clone()))?;
        Ok(Self {
            cert_der: cert_der.to_vec(),
            signer,
            rcgen,
            ski,
            subject_der,
            public_key_bits,
            not_before,
            not_after,
            is_self_signed,
        })
    }

    /// Loads a CA from PEM certificate and PEM PKCS#8 key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, AuthorityError> {
        let cert = pem_der(cert_pem, "CERTIFICATE")?;
        let key = PrivateKey::from_pkcs8_pem(key_pem).ok_or(AuthorityError::InvalidKey)?;
        Self::from_der(&cert, &key)
    }

    /// The issuer id: lowercase hex of the certificate's subject key identifier.
    pub fn id(&self) -> String {
        hex::encode(&self.ski)
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The certificate, PEM.
    pub fn cert_pem(&self) -> String {
        to_pem("CERTIFICATE", &self.cert_der)
    }

    /// Subject key identifier bytes.
    pub fn ski(&self) -> &[u8] {
        &self.ski
    }

    /// DER of the subject name (OCSP issuerNameHash input).
    pub fn subject_der(&self) -> &[u8] {
        &self.subject_der
    }

    /// The public key bits (OCSP issuerKeyHash input).
    pub fn public_key_bits(&self) -> &[u8] {
        &self.public_key_bits
    }

    /// notBefore, unix seconds.
    pub fn not_before(&self) -> i64 {
        self.not_before
    }

    /// notAfter, unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// Whether the certificate is self-signed (a root).
    pub fn is_root(&self) -> bool {
        self.is_self_signed
    }

    /// The private key, PKCS#8, for sealing into storage; None when the key lives in secure
    /// hardware.
    pub fn private_key(&self) -> Option<PrivateKey> {
        self.signer.export_pkcs8()
    }

    /// The signer holding the CA key.
    pub fn signer(&self) -> &Arc<dyn Signer> {
        &self.signer
    }

    /// Signs `msg` with the CA key (ECDSA signatures are DER-encoded).
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignError> {
        self.signer.sign(msg)
    }

    /// The signature algorithm of the CA key.
    pub fn signature_algorithm(&self) -> &'static SignatureAlgorithm {
        self.signer.scheme().rcgen()
    }

    pub(crate) fn rcgen(&self) -> &rcgen::Issuer<'static, RcgenKey> {
        &self.rcgen
    }
}

/// Creates a self-signed root CA (pathLen 1) named `common_name`, valid `validity_secs` from
/// `now` (backdated by [`BACKDATE_SECS`]).
pub fn create_root(
    common_name: &str,
    alg: CaKeyAlgorithm,
    now: i64,
    validity_secs: i64,
) -> Result<Issuer, AuthorityError> {
    let signer = Arc::new(SoftwareSigner::generate(alg.scheme())?);
    create_root_with(common_name, signer, now, validity_secs)
}

/// Like [`create_root`], with a key that already exists (e.g. generated in a token).
pub fn create_root_with(
    common_name: &str,
    signer: Arc<dyn Signer>,
    now: i64,
    validity_secs: i64,
) -> Result<Issuer, AuthorityError> {
    let key = RcgenKey(signer.clone());
    let mut params = ca_params(common_name, 1, now, now.saturating_add(validity_secs));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key)?;
    Issuer::with_signer(cert.der(), signer)
}

/// Creates an intermediate CA (pathLen 0) under `root`; its validity is capped by the root's.
pub fn create_intermediate(
    root: &Issuer,
    common_name: &str,
    alg: CaKeyAlgorithm,
    now: i64,
    validity_secs: i64,
) -> Result<Issuer, AuthorityError> {
    let signer = Arc::new(SoftwareSigner::generate(alg.scheme())?);
    create_intermediate_with(root, common_name, signer, now, validity_secs)
}

/// Like [`create_intermediate`], with a key that already exists (e.g. generated in a token).
pub fn create_intermediate_with(
    root: &Issuer,
    common_name: &str,
    signer: Arc<dyn Signer>,
    now: i64,
    validity_secs: i64,
) -> Result<Issuer, AuthorityError> {
    let not_after = now.saturating_add(validity_secs).min(root.not_after);
    if not_after <= now {
        return Err(AuthorityError::IssuerExpired);
    }
    let key = RcgenKey(signer.clone());
    let mut params = ca_params(common_name, 0, now, not_after);
    params.not_before = to_datetime((now - BACKDATE_SECS).max(root.not_before));
    // digitalSignature: the intermediate signs OCSP responses and audit checkpoints directly.
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, root.rcgen())?;
    Issuer::with_signer(cert.der(), signer)
}

/// Imports an externally signed intermediate (offline root): checks that the key matches the
/// certificate, that it is a CA, and that it is signed by `root_pem`.
pub fn import_intermediate(
    cert_pem: &str,
    key_pem: &str,
    root_pem: &str,
) -> Result<Issuer, AuthorityError> {
    let issuer = Issuer::from_pem(cert_pem, key_pem)?;
    let root_der = pem_der(root_pem, "CERTIFICATE")?;
    verify_signed_by(issuer.cert_der(), &root_der)?;
    Ok(issuer)
}

/// Checks that `cert_der` names `issuer_der`'s subject as issuer and carries its signature.
pub fn verify_signed_by(cert_der: &[u8], issuer_der: &[u8]) -> Result<(), AuthorityError> {
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|_| AuthorityError::InvalidCertificate)?;
    let (_, issuer) =
        X509Certificate::from_der(issuer_der).map_err(|_| AuthorityError::InvalidCertificate)?;
    if !issuer.is_ca() {
        return Err(AuthorityError::NotACa);
    }
    if cert.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(AuthorityError::NotSignedByRoot);
    }
    cert.verify_signature(Some(issuer.public_key())).map_err(|_| AuthorityError::NotSignedByRoot)
}

/// Concatenates certificates (DER) into a PEM chain, in the given order.
pub fn chain_pem<'a>(certs: impl IntoIterator<Item = &'a [u8]>) -> String {
    certs.into_iter().map(|der| to_pem("CERTIFICATE", der)).collect()
}

/// Splits a PEM bundle into DER certificates (ignores non-certificate blocks).
pub fn certs_from_pem(text: &str) -> Result<Vec<Vec<u8>>, AuthorityError> {
    let blocks = pem::parse_many(text).map_err(|_| AuthorityError::InvalidCertificate)?;
    Ok(blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect())
}

/// Encodes DER as PEM with LF line endings.
pub fn to_pem(tag: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn pem_der(text: &str, tag: &str) -> Result<Vec<u8>, AuthorityError> {
    let block = pem::parse(text).map_err(|_| AuthorityError::InvalidCertificate)?;
    if block.tag() != tag {
        return Err(AuthorityError::InvalidCertificate);
    }
    Ok(block.into_contents())
}

fn ca_params(common_name: &str, path_len: u8, now: i64, not_after: i64) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.not_before = to_datetime(now - BACKDATE_SECS);
    params.not_after = to_datetime(not_after);
    params.serial_number = Some(random_serial());
    params
}

/// The signature scheme and subjectPublicKey bits of a certificate's key (what a signer for
/// that key must match).
pub fn public_key_of(cert_der: &[u8]) -> Result<(SignatureScheme, Vec<u8>), AuthorityError> {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    };
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|_| AuthorityError::InvalidCertificate)?;
    let spki = cert.public_key();
    let alg = &spki.algorithm;
    let scheme = if alg.algorithm == OID_PKCS1_RSAENCRYPTION {
        SignatureScheme::RsaPkcs1Sha256
    } else if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = alg.parameters.as_ref().and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_EC_P256 => SignatureScheme::EcdsaP256Sha256,
            Some(c) if c == OID_NIST_EC_P384 => SignatureScheme::EcdsaP384Sha384,
            _ => return Err(AuthorityError::InvalidKey),
        }
    } else {
        return Err(AuthorityError::InvalidKey);
    };
    Ok((scheme, spki.subject_public_key.data.to_vec()))
}

/// Public facts of a CA certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCertInfo {
    /// lowercase hex SKI (the issuer id)
    pub id: String,
    /// notAfter, unix seconds
    pub not_after: i64,
    /// self-signed?
    pub self_signed: bool,
}

/// Reads a CA certificate (PEM): it must be a CA and carry an SKI.
pub fn ca_cert_info(pem_text: &str) -> Result<(Vec<u8>, CaCertInfo), AuthorityError> {
    let der = pem_der(pem_text, "CERTIFICATE")?;
    let (_, cert) =
        X509Certificate::from_der(&der).map_err(|_| AuthorityError::InvalidCertificate)?;
    if !cert.is_ca() {
        return Err(AuthorityError::NotACa);
    }
    let id = hex::encode(ski_of(&cert).ok_or(AuthorityError::InvalidCertificate)?);
    let info = CaCertInfo {
        id,
        not_after: cert.validity().not_after.timestamp(),
        self_signed: cert.subject().as_raw() == cert.issuer().as_raw(),
    };
    Ok((der, info))
}

pub(crate) fn ski_of(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions().iter().find_map(|ext| match ext.parsed_extension() {
        x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(ki) => Some(ki.0.to_vec()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const YEAR: i64 = 365 * 86400;

    #[test]
    fn root_and_intermediate_have_the_mandated_shape() {
        let root = create_root("Test Root", CaKeyAlgorithm::P256, NOW, 20 * YEAR).unwrap();
        let inter =
            create_intermediate(&root, "Test Intermediate", CaKeyAlgorithm::P256, NOW, 50 * YEAR)
                .unwrap();
        assert!(root.is_root());
        assert!(!inter.is_root());
        assert_eq!(inter.not_after(), root.not_after(), "capped by the root");
        verify_signed_by(inter.cert_der(), root.cert_der()).unwrap();
        let (_, cert) = X509Certificate::from_der(inter.cert_der()).unwrap();
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical);
        assert_eq!(bc.value.path_len_constraint, Some(0));
        let ku = cert.key_usage().unwrap().unwrap();
        assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    }

    #[test]
    fn p384_cas_are_supported() {
        let root = create_root("R", CaKeyAlgorithm::P384, NOW, YEAR).unwrap();
        let inter = create_intermediate(&root, "I", CaKeyAlgorithm::P384, NOW, YEAR).unwrap();
        assert_eq!(inter.signature_algorithm(), &rcgen::PKCS_ECDSA_P384_SHA384);
    }

    #[test]
    fn import_checks_key_match_and_root_signature() {
        let root = create_root("R", CaKeyAlgorithm::P256, NOW, YEAR).unwrap();
        let other_root = create_root("R2", CaKeyAlgorithm::P256, NOW, YEAR).unwrap();
        let inter = create_intermediate(&root, "I", CaKeyAlgorithm::P256, NOW, YEAR).unwrap();
        let key_pem = inter.private_key().unwrap().to_pkcs8_pem();
        import_intermediate(&inter.cert_pem(), &key_pem, &root.cert_pem()).unwrap();
        assert!(matches!(
            import_intermediate(&inter.cert_pem(), &key_pem, &other_root.cert_pem()),
            Err(AuthorityError::NotSignedByRoot)
        ));
        let wrong_key = other_root.private_key().unwrap().to_pkcs8_pem();
        assert!(matches!(
            import_intermediate(&inter.cert_pem(), &wrong_key, &root.cert_pem()),
            Err(AuthorityError::KeyMismatch)
        ));
        assert!(matches!(
            import_intermediate("nonsense", &key_pem, &root.cert_pem()),
            Err(AuthorityError::InvalidCertificate)
        ));
    }
}
