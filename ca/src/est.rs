//! EST (RFC 7030) message formats: certs-only CMS (`application/pkcs7-mime`), base64 bodies.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use der::{Decode as _, Encode as _};

/// Why an EST message could not be built or read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EstError {
    /// A certificate is not valid DER.
    #[error("certificate is not valid DER")]
    BadCertificate,
    /// The body is not base64.
    #[error("body is not base64")]
    NotBase64,
    /// DER encoding failed.
    #[error("encoding failed")]
    Encoding,
}

/// A certs-only CMS SignedData (RFC 5652, as RFC 7030 §4.1.3 / §4.2.3 use it), DER.
pub fn certs_only(ders: &[&[u8]]) -> Result<Vec<u8>, EstError> {
    let certs = ders
        .iter()
        .map(|d| x509_cert::Certificate::from_der(d).map_err(|_| EstError::BadCertificate))
        .collect::<Result<Vec<_>, _>>()?;
    let info = cms::content_info::ContentInfo::try_from(certs).map_err(|_| EstError::Encoding)?;
    info.to_der().map_err(|_| EstError::Encoding)
}

/// Base64 with 64-character lines (RFC 7030 bodies use the base64 transfer encoding).
pub fn base64_lines(der: &[u8]) -> String {
    let text = STANDARD.encode(der);
    let mut out = String::with_capacity(text.len() + text.len() / 64 + 1);
    for chunk in text.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out
}

/// Decodes a base64 body, ignoring whitespace and line breaks.
pub fn decode_base64_body(body: &[u8]) -> Result<Vec<u8>, EstError> {
    let compact: Vec<u8> = body.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    STANDARD.decode(compact).map_err(|_| EstError::NotBase64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::{create_root, CaKeyAlgorithm};

    #[test]
    fn certs_only_round_trips_through_cms() {
        let root = create_root("R", CaKeyAlgorithm::P256, 1_800_000_000, 86400).unwrap();
        let der = certs_only(&[root.cert_der()]).unwrap();
        let info = cms::content_info::ContentInfo::from_der(&der).unwrap();
        assert_eq!(info.content_type, const_oid::db::rfc5911::ID_SIGNED_DATA);
        let body = base64_lines(&der);
        assert!(body.lines().all(|l| l.len() <= 64));
        assert_eq!(decode_base64_body(body.as_bytes()).unwrap(), der);
        assert_eq!(certs_only(&[b"junk"]), Err(EstError::BadCertificate));
    }
}
