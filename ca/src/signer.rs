//! The one seam every CA signature goes through: certificates, CRLs, OCSP responses (here) and,
//! in `service`, audit checkpoints and the instance's own TLS certificate.
//!
//! A [`Signer`] is a private key somewhere — in memory ([`SoftwareSigner`], the PKCS#8 key as
//! before) or in secure hardware (the PKCS#11 signer in `service`, which this crate never sees).
//! This crate stays free of I/O: it only calls [`Signer::sign`].
//!
//! rcgen signs through its own `SigningKey` trait, whose error type cannot carry ours; the
//! adapter [`RcgenKey`] parks the [`SignError`] of a failed signature in a thread-local slot and
//! [`take_sign_error`] hands it back to the caller on the same thread, so a token that is
//! unreachable reaches `service` as [`SignError::Unavailable`], not as an opaque rcgen error.

use std::cell::RefCell;
use std::sync::Arc;

use rcgen::{KeyPair, PublicKeyData as _};

use crate::secret::PrivateKey;

/// The signature scheme of a CA key, as it appears in X.509.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureScheme {
    /// ECDSA P-256 with SHA-256 (signature DER-encoded in X.509).
    EcdsaP256Sha256,
    /// ECDSA P-384 with SHA-384.
    EcdsaP384Sha384,
    /// RSA PKCS#1 v1.5 with SHA-256.
    RsaPkcs1Sha256,
}

impl SignatureScheme {
    /// rcgen's descriptor (algorithm identifiers of the certificate and its key).
    pub fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            SignatureScheme::EcdsaP256Sha256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            SignatureScheme::EcdsaP384Sha384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            SignatureScheme::RsaPkcs1Sha256 => &rcgen::PKCS_RSA_SHA256,
        }
    }

    /// The scheme of an rcgen algorithm, if it is one a CA may use.
    pub fn from_rcgen(alg: &rcgen::SignatureAlgorithm) -> Option<Self> {
        [Self::EcdsaP256Sha256, Self::EcdsaP384Sha384, Self::RsaPkcs1Sha256]
            .into_iter()
            .find(|s| s.rcgen() == alg)
    }

    /// The JWS `alg` for a checkpoint signed by this key (API.md A30: ES256, ES384, PS256).
    pub fn jws_alg(self) -> &'static str {
        match self {
            SignatureScheme::EcdsaP256Sha256 => "ES256",
            SignatureScheme::EcdsaP384Sha384 => "ES384",
            SignatureScheme::RsaPkcs1Sha256 => "PS256",
        }
    }

    /// Length of one ECDSA scalar (r or s) in bytes; None for RSA.
    pub fn ecdsa_scalar_len(self) -> Option<usize> {
        match self {
            SignatureScheme::EcdsaP256Sha256 => Some(32),
            SignatureScheme::EcdsaP384Sha384 => Some(48),
            SignatureScheme::RsaPkcs1Sha256 => None,
        }
    }
}

/// Why a signature could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The key store cannot be reached now (token gone, module failing); retrying later may work.
    #[error("the CA key store is unavailable: {0}")]
    Unavailable(String),
    /// The key store is reachable but holds no key under this label.
    #[error("the CA key `{0}` is not in the key store")]
    KeyMissing(String),
    /// The key store cannot make this kind of signature.
    #[error("the CA key store does not support {0}")]
    Unsupported(String),
    /// Signing failed for another reason.
    #[error("signing failed: {0}")]
    Failed(String),
}

/// A CA private key that signs. Implementations must be cheap to call from several threads.
pub trait Signer: Send + Sync {
    /// The X.509 signature scheme of this key.
    fn scheme(&self) -> SignatureScheme;

    /// The subjectPublicKey bits (EC point, or RSA PKCS#1 public key).
    fn public_key(&self) -> &[u8];

    /// Signs `msg` as X.509 wants it for [`Signer::scheme`] (ECDSA: DER `Ecdsa-Sig-Value`).
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignError>;

    /// Signs `msg` for a JWS with [`SignatureScheme::jws_alg`] (ECDSA: fixed-size r‖s; RSA:
    /// PSS with SHA-256). The default converts the ECDSA DER signature of [`Signer::sign`].
    fn sign_jws(&self, msg: &[u8]) -> Result<Vec<u8>, SignError> {
        let len = self
            .scheme()
            .ecdsa_scalar_len()
            .ok_or_else(|| SignError::Unsupported("RSA-PSS checkpoints".into()))?;
        ecdsa_der_to_raw(&self.sign(msg)?, len)
            .ok_or_else(|| SignError::Failed("malformed ECDSA signature".into()))
    }

    /// The PKCS#8 key, for keys that live in memory (sealed into storage); None for keys in
    /// secure hardware.
    fn export_pkcs8(&self) -> Option<PrivateKey> {
        None
    }

    /// Where the key lives when it is not in memory (e.g. a PKCS#11 label).
    fn key_label(&self) -> Option<&str> {
        None
    }
}

/// A CA key held in memory (PKCS#8), signing with ring.
pub struct SoftwareSigner {
    pair: KeyPair,
    scheme: SignatureScheme,
}

impl std::fmt::Debug for SoftwareSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftwareSigner").field("scheme", &self.scheme).finish_non_exhaustive()
    }
}

impl SoftwareSigner {
    /// Generates a new key of `scheme` (ECDSA only: ring cannot generate RSA keys).
    pub fn generate(scheme: SignatureScheme) -> Result<Self, SignError> {
        let pair = KeyPair::generate_for(scheme.rcgen())
            .map_err(|e| SignError::Unsupported(format!("generating {scheme:?} keys: {e}")))?;
        Ok(Self { pair, scheme })
    }

    /// Loads a PKCS#8 key; None when it is not a supported CA key.
    pub fn from_pkcs8(key: &PrivateKey) -> Option<Self> {
        let pair = KeyPair::try_from(key.expose_secret()).ok()?;
        let scheme = SignatureScheme::from_rcgen(pair.algorithm())?;
        Some(Self { pair, scheme })
    }
}

impl Signer for SoftwareSigner {
    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }

    fn public_key(&self) -> &[u8] {
        self.pair.der_bytes()
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignError> {
        rcgen::SigningKey::sign(&self.pair, msg).map_err(|e| SignError::Failed(e.to_string()))
    }

    fn export_pkcs8(&self) -> Option<PrivateKey> {
        Some(PrivateKey::from_pkcs8_der(self.pair.serialize_der()))
    }
}

thread_local! {
    static LAST_ERROR: RefCell<Option<SignError>> = const { RefCell::new(None) };
}

/// A [`Signer`] as rcgen's `SigningKey`.
#[derive(Clone)]
pub struct RcgenKey(pub Arc<dyn Signer>);

impl rcgen::PublicKeyData for RcgenKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.public_key()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.scheme().rcgen()
    }
}

impl rcgen::SigningKey for RcgenKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign(msg).map_err(|e| {
            LAST_ERROR.with(|slot| *slot.borrow_mut() = Some(e));
            rcgen::Error::RemoteKeyError
        })
    }
}

/// The signer's error behind an rcgen failure on this thread, if the signer caused it.
pub fn take_sign_error(e: &rcgen::Error) -> Option<SignError> {
    let parked = LAST_ERROR.with(|slot| slot.borrow_mut().take());
    matches!(e, rcgen::Error::RemoteKeyError).then_some(parked).flatten()
}

/// DER `Ecdsa-Sig-Value` → fixed-size r‖s (JWS, PKCS#11).
pub fn ecdsa_der_to_raw(der_sig: &[u8], scalar_len: usize) -> Option<Vec<u8>> {
    use der::Decode as _;
    #[derive(der::Sequence)]
    struct EcdsaSig<'a> {
        r: der::asn1::UintRef<'a>,
        s: der::asn1::UintRef<'a>,
    }
    let sig = EcdsaSig::from_der(der_sig).ok()?;
    let mut out = vec![0u8; scalar_len * 2];
    for (i, part) in [sig.r.as_bytes(), sig.s.as_bytes()].into_iter().enumerate() {
        if part.len() > scalar_len {
            return None;
        }
        let end = (i + 1) * scalar_len;
        out[end - part.len()..end].copy_from_slice(part);
    }
    Some(out)
}

/// Fixed-size r‖s (PKCS#11 `CKM_ECDSA`) → DER `Ecdsa-Sig-Value` (X.509).
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    use der::Encode as _;
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let seq = [der::asn1::UintRef::new(r).ok()?, der::asn1::UintRef::new(s).ok()?];
    let mut body = Vec::new();
    for n in seq {
        n.encode_to_vec(&mut body).ok()?;
    }
    der::asn1::AnyRef::new(der::Tag::Sequence, &body).ok()?.to_der().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_encodings_round_trip() {
        let s = SoftwareSigner::generate(SignatureScheme::EcdsaP256Sha256).unwrap();
        for _ in 0..50 {
            let der_sig = s.sign(b"msg").unwrap();
            let raw = ecdsa_der_to_raw(&der_sig, 32).unwrap();
            assert_eq!(raw.len(), 64);
            assert_eq!(ecdsa_raw_to_der(&raw).unwrap(), der_sig);
        }
        assert_eq!(s.sign_jws(b"m").unwrap().len(), 64);
    }

    #[test]
    fn signer_errors_survive_rcgen() {
        struct Down;
        impl Signer for Down {
            fn scheme(&self) -> SignatureScheme {
                SignatureScheme::EcdsaP256Sha256
            }
            fn public_key(&self) -> &[u8] {
                &[4; 65]
            }
            fn sign(&self, _: &[u8]) -> Result<Vec<u8>, SignError> {
                Err(SignError::Unavailable("token gone".into()))
            }
        }
        let key = RcgenKey(Arc::new(Down));
        let err = rcgen::CertificateParams::default().self_signed(&key).unwrap_err();
        assert_eq!(take_sign_error(&err), Some(SignError::Unavailable("token gone".into())));
        assert_eq!(take_sign_error(&err), None, "taken once");
    }
}
