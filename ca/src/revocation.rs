//! Revocation artifacts: CRL v2 (RFC 5280 §5) and OCSP basic responses (RFC 6960).
//!
//! Both are signed by the issuing CA itself. The CRL's AKI equals the issuer's SKI (also for
//! imported intermediates), the CRL number is supplied by the caller (it must grow on every
//! change), and each entry carries a reasonCode. OCSP requests are parsed strictly; CertIDs in
//! SHA-1 or SHA-256 are matched against the issuer; the request nonce extension is echoed.

use der::asn1::{BitString, GeneralizedTime, OctetString};
use der::{Decode as _, Encode as _};
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use sha1::Sha1;
use sha2::{Digest as _, Sha256};
use spki::AlgorithmIdentifierOwned;
use x509_cert::ext::pkix::crl::CrlReason;
use x509_cert::ext::Extension;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspGeneralizedTime, OcspRequest, OcspResponse,
    ResponderId, ResponseData, RevokedInfo, SingleResponse, Version,
};

use crate::authority::Issuer;
use crate::time::{to_datetime, to_der_datetime};

/// Most CertIDs answered in one OCSP request.
pub const MAX_OCSP_QUERIES: usize = 32;

/// Why a CRL or OCSP operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    /// A serial number is not hex.
    #[error("serial `{0}` is not hexadecimal")]
    BadSerial(String),
    /// DER encoding of the response failed.
    #[error("encoding failed")]
    Encoding,
    /// The OCSP request is not valid DER, is empty, or asks for too many certificates.
    #[error("malformed OCSP request")]
    MalformedRequest,
    /// `next_update` is not after `this_update`.
    #[error("nextUpdate must be after thisUpdate")]
    NextUpdateNotAfterThisUpdate,
    /// The CA key type cannot sign OCSP responses here.
    #[error("unsupported CA signature algorithm")]
    UnsupportedSigner,
    /// rcgen refused to build or sign.
    #[error("signing failed: {0}")]
    Signing(rcgen::Error),
    /// The CA key's signer failed (e.g. the token is unreachable).
    #[error(transparent)]
    Sign(#[from] crate::signer::SignError),
}

impl From<rcgen::Error> for RevocationError {
    fn from(e: rcgen::Error) -> Self {
        match crate::signer::take_sign_error(&e) {
            Some(sign) => RevocationError::Sign(sign),
            None => RevocationError::Signing(e),
        }
    }
}

/// CRL reason codes (RFC 5280 §5.3.1), with the API's snake_case names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RevocationReason {
    /// affiliationChanged (3)
    AffiliationChanged,
    /// cACompromise (2)
    CaCompromise,
    /// certificateHold (6)
    CertificateHold,
    /// cessationOfOperation (5)
    CessationOfOperation,
    /// keyCompromise (1)
    KeyCompromise,
    /// privilegeWithdrawn (9)
    PrivilegeWithdrawn,
    /// superseded (4)
    Superseded,
    /// unspecified (0)
    #[default]
    Unspecified,
}

impl RevocationReason {
    /// Every reason, for parsers and docs.
    pub const ALL: [RevocationReason; 8] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::CaCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::CertificateHold,
        RevocationReason::PrivilegeWithdrawn,
    ];

    /// API name (`key_compromise`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::AffiliationChanged => "affiliation_changed",
            RevocationReason::CaCompromise => "ca_compromise",
            RevocationReason::CertificateHold => "certificate_hold",
            RevocationReason::CessationOfOperation => "cessation_of_operation",
            RevocationReason::KeyCompromise => "key_compromise",
            RevocationReason::PrivilegeWithdrawn => "privilege_withdrawn",
            RevocationReason::Superseded => "superseded",
            RevocationReason::Unspecified => "unspecified",
        }
    }

    /// Parses an API name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    fn rcgen(self) -> rcgen::RevocationReason {
        match self {
            RevocationReason::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
            RevocationReason::CaCompromise => rcgen::RevocationReason::CaCompromise,
            RevocationReason::CertificateHold => rcgen::RevocationReason::CertificateHold,
            RevocationReason::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
            RevocationReason::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
            RevocationReason::PrivilegeWithdrawn => rcgen::RevocationReason::PrivilegeWithdrawn,
            RevocationReason::Superseded => rcgen::RevocationReason::Superseded,
            RevocationReason::Unspecified => rcgen::RevocationReason::Unspecified,
        }
    }

    fn crl_reason(self) -> CrlReason {
        match self {
            RevocationReason::AffiliationChanged => CrlReason::AffiliationChanged,
            RevocationReason::CaCompromise => CrlReason::CaCompromise,
            RevocationReason::CertificateHold => CrlReason::CertificateHold,
            RevocationReason::CessationOfOperation => CrlReason::CessationOfOperation,
            RevocationReason::KeyCompromise => CrlReason::KeyCompromise,
            RevocationReason::PrivilegeWithdrawn => CrlReason::PrivilegeWithdrawn,
            RevocationReason::Superseded => CrlReason::Superseded,
            RevocationReason::Unspecified => CrlReason::Unspecified,
        }
    }
}

/// One revoked certificate in a CRL.
#[derive(Debug, Clone)]
pub struct RevokedEntry {
    /// Serial, hex.
    pub serial: String,
    /// Revocation time, unix seconds.
    pub revoked_at: i64,
    /// Reason code.
    pub reason: RevocationReason,
}

/// Builds a DER CRL v2 signed by `issuer`.
pub fn build_crl(
    issuer: &Issuer,
    crl_number: u64,
    this_update: i64,
    next_update: i64,
    entries: &[RevokedEntry],
) -> Result<Vec<u8>, RevocationError> {
    if next_update <= this_update {
        return Err(RevocationError::NextUpdateNotAfterThisUpdate);
    }
    let revoked_certs = entries
        .iter()
        .map(|e| {
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial_bytes(&e.serial)?),
                revocation_time: to_datetime(e.revoked_at),
                reason_code: Some(e.reason.rcgen()),
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>, RevocationError>>()?;
    let params = CertificateRevocationListParams {
        this_update: to_datetime(this_update),
        next_update: to_datetime(next_update),
        crl_number: SerialNumber::from(crl_number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::PreSpecified(issuer.ski().to_vec()),
    };
    Ok(params.signed_by(issuer.rcgen())?.der().to_vec())
}

/// One CertID of an OCSP request.
#[derive(Debug, Clone)]
pub struct OcspQuery {
    cert_id: CertId,
    serial: String,
}

impl OcspQuery {
    /// The queried serial, canonical lowercase hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// Whether the CertID's issuer name and key hashes match `issuer` (SHA-1 or SHA-256).
    pub fn is_issued_by(&self, issuer: &Issuer) -> bool {
        let alg = &self.cert_id.hash_algorithm.oid;
        let (name, key) = if *alg == const_oid::db::rfc5912::ID_SHA_1 {
            (
                Sha1::digest(issuer.subject_der()).to_vec(),
                Sha1::digest(issuer.public_key_bits()).to_vec(),
            )
        } else if *alg == const_oid::db::rfc5912::ID_SHA_256 {
            (
                Sha256::digest(issuer.subject_der()).to_vec(),
                Sha256::digest(issuer.public_key_bits()).to_vec(),
            )
        } else {
            return false;
        };
        use subtle::ConstantTimeEq as _;
        // Not secret, but constant-time comparison costs nothing here.
        bool::from(self.cert_id.issuer_name_hash.as_bytes().ct_eq(&name))
            && bool::from(self.cert_id.issuer_key_hash.as_bytes().ct_eq(&key))
    }
}

/// A parsed OCSP request.
#[derive(Debug, Clone)]
pub struct ParsedOcspRequest {
    queries: Vec<OcspQuery>,
    nonce: Option<Extension>,
}

impl ParsedOcspRequest {
    /// Parses a DER `OCSPRequest`. Signed requests are accepted; the signature is ignored
    /// (RFC 6960 makes request signing optional and provisiond answers anyone).
    pub fn parse(der: &[u8]) -> Result<Self, RevocationError> {
        let req = OcspRequest::from_der(der).map_err(|_| RevocationError::MalformedRequest)?;
        let list = &req.tbs_request.request_list;
        if list.is_empty() || list.len() > MAX_OCSP_QUERIES {
            return Err(RevocationError::MalformedRequest);
        }
        let queries = list
            .iter()
            .map(|r| OcspQuery {
                serial: crate::issue::serial_hex(r.req_cert.serial_number.as_bytes()),
                cert_id: r.req_cert.clone(),
            })
            .collect();
        let nonce = req
            .tbs_request
            .request_extensions
            .iter()
            .flatten()
            .find(|e| e.extn_id == const_oid::db::rfc6960::ID_PKIX_OCSP_NONCE)
            .cloned();
        Ok(Self { queries, nonce })
    }

    /// The CertIDs asked about, in request order.
    pub fn queries(&self) -> &[OcspQuery] {
        &self.queries
    }
}

/// What the responder knows about one certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertState {
    /// Issued by this CA and not revoked.
    Good,
    /// Revoked at `at` for `reason`.
    Revoked {
        /// unix seconds
        at: i64,
        /// reason code
        reason: RevocationReason,
    },
    /// Not issued by this CA (or not known).
    Unknown,
}

/// Builds a signed, successful OCSP response answering `request` with `states` (one per query,
/// same order). `next_update` is when clients should ask again.
pub fn ocsp_response(
    signer: &Issuer,
    request: &ParsedOcspRequest,
    states: &[CertState],
    now: i64,
    next_update: i64,
) -> Result<Vec<u8>, RevocationError> {
    let gt = |t: i64| OcspGeneralizedTime(GeneralizedTime::from_date_time(to_der_datetime(t)));
    let responses = request
        .queries
        .iter()
        .zip(states.iter().chain(std::iter::repeat(&CertState::Unknown)))
        .map(|(q, state)| SingleResponse {
            cert_id: q.cert_id.clone(),
            cert_status: match *state {
                CertState::Good => CertStatus::good(),
                CertState::Unknown => CertStatus::unknown(),
                CertState::Revoked { at, reason } => CertStatus::revoked(RevokedInfo {
                    revocation_time: gt(at),
                    revocation_reason: Some(reason.crl_reason()),
                }),
            },
            this_update: gt(now),
            next_update: Some(gt(next_update)),
            single_extensions: None,
        })
        .collect();
    let key_hash = OctetString::new(Sha1::digest(signer.public_key_bits()).to_vec())
        .map_err(|_| RevocationError::Encoding)?;
    let tbs = ResponseData {
        version: Version::V1,
        responder_id: ResponderId::ByKey(key_hash),
        produced_at: gt(now),
        responses,
        response_extensions: request.nonce.clone().map(|n| vec![n]),
    };
    let tbs_der = tbs.to_der().map_err(|_| RevocationError::Encoding)?;
    let signature = signer.sign(&tbs_der)?;
    let cert = x509_cert::Certificate::from_der(signer.cert_der())
        .map_err(|_| RevocationError::Encoding)?;
    let basic = BasicOcspResponse {
        tbs_response_data: tbs,
        signature_algorithm: signature_algorithm(signer)?,
        signature: BitString::from_bytes(&signature).map_err(|_| RevocationError::Encoding)?,
        certs: Some(vec![cert]),
    };
    OcspResponse::successful(basic).and_then(|r| r.to_der()).map_err(|_| RevocationError::Encoding)
}

/// DER of an `OCSPResponse` with status `malformedRequest` (RFC 6960 §2.3).
pub fn ocsp_malformed() -> Vec<u8> {
    // Two fixed bytes of content; encoding a constant cannot fail, but fall back to the known
    // encoding (SEQUENCE { ENUMERATED 1 }) rather than panicking.
    OcspResponse::malformed_request()
        .to_der()
        .unwrap_or_else(|_| vec![0x30, 0x03, 0x0a, 0x01, 0x01])
}

/// DER of an `OCSPResponse` with status `unauthorized` (RFC 6960 §2.3): the responder is not
/// authoritative for the requested certificates' issuer.
pub fn ocsp_unauthorized() -> Vec<u8> {
    let resp = OcspResponse {
        response_status: x509_ocsp::OcspResponseStatus::Unauthorized,
        response_bytes: None,
    };
    resp.to_der().unwrap_or_else(|_| vec![0x30, 0x03, 0x0a, 0x01, 0x06])
}

fn signature_algorithm(signer: &Issuer) -> Result<AlgorithmIdentifierOwned, RevocationError> {
    use const_oid::db::rfc5912::{
        ECDSA_WITH_SHA_256, ECDSA_WITH_SHA_384, SHA_256_WITH_RSA_ENCRYPTION,
    };
    let alg = signer.signature_algorithm();
    let oid = if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        ECDSA_WITH_SHA_256
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        ECDSA_WITH_SHA_384
    } else if alg == &rcgen::PKCS_ED25519 {
        const_oid::db::rfc8410::ID_ED_25519
    } else if alg == &rcgen::PKCS_RSA_SHA256 {
        return Ok(AlgorithmIdentifierOwned {
            oid: SHA_256_WITH_RSA_ENCRYPTION,
            parameters: Some(der::asn1::Null.into()),
        });
    } else {
        return Err(RevocationError::UnsupportedSigner);
    };
    Ok(AlgorithmIdentifierOwned { oid, parameters: None })
}

fn serial_bytes(serial: &str) -> Result<Vec<u8>, RevocationError> {
    let padded = if serial.len() % 2 == 1 { format!("0{serial}") } else { serial.to_owned() };
    hex::decode(padded).map_err(|_| RevocationError::BadSerial(serial.to_owned()))
}

#[cfg(test)]
mod tests {
    use x509_parser::prelude::{CertificateRevocationList, FromDer};

    use super::*;
    use crate::authority::{create_intermediate, create_root, CaKeyAlgorithm};

    const NOW: i64 = 1_800_000_000;

    fn ca() -> Issuer {
        let root = create_root("R", CaKeyAlgorithm::P256, NOW, 10 * 365 * 86400).unwrap();
        create_intermediate(&root, "I", CaKeyAlgorithm::P256, NOW, 365 * 86400).unwrap()
    }

    #[test]
    fn crl_lists_entries_with_reasons_and_verifies() {
        let issuer = ca();
        let entries = [RevokedEntry {
            serial: "4a0b".into(),
            revoked_at: NOW - 5,
            reason: RevocationReason::KeyCompromise,
        }];
        let der = build_crl(&issuer, 7, NOW, NOW + 3600, &entries).unwrap();
        let (_, crl) = CertificateRevocationList::from_der(&der).unwrap();
        assert_eq!(crl.crl_number().map(|n| n.to_string()), Some("7".into()));
        let revoked: Vec<_> = crl.iter_revoked_certificates().collect();
        assert_eq!(revoked.len(), 1);
        assert_eq!(revoked[0].raw_serial_as_string(), "4a:0b");
        let (_, issuer_cert) = x509_parser::parse_x509_certificate(issuer.cert_der()).unwrap();
        crl.verify_signature(issuer_cert.public_key()).unwrap();
        assert!(build_crl(&issuer, 8, NOW, NOW, &entries).is_err());
        assert!(matches!(
            build_crl(
                &issuer,
                8,
                NOW,
                NOW + 1,
                &[RevokedEntry { serial: "zz".into(), ..entries[0].clone() }]
            ),
            Err(RevocationError::BadSerial(_))
        ));
    }

    #[test]
    fn garbage_ocsp_requests_are_malformed() {
        assert!(matches!(ParsedOcspRequest::parse(b""), Err(RevocationError::MalformedRequest)));
        assert!(matches!(
            ParsedOcspRequest::parse(&[0x30, 0x00]),
            Err(RevocationError::MalformedRequest)
        ));
        assert_eq!(ocsp_malformed(), vec![0x30, 0x03, 0x0a, 0x01, 0x01]);
        assert_eq!(ocsp_unauthorized(), vec![0x30, 0x03, 0x0a, 0x01, 0x06]);
    }

    #[test]
    fn reason_names_round_trip() {
        for r in RevocationReason::ALL {
            assert_eq!(RevocationReason::parse(r.as_str()), Some(r));
        }
        assert_eq!(RevocationReason::parse("remove_from_crl"), None);
    }

    proptest::proptest! {
        #[test]
        fn ocsp_parser_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = ParsedOcspRequest::parse(&bytes);
        }
    }
}
