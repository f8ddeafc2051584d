//! Secret newtypes.
//!
//! Invariants: the bytes zeroize on drop; `Debug` prints `[secret elided]`; there is no `Display`,
//! `Serialize` or `Clone` (use `clone_secret()` where a copy is really needed); the bytes are
//! reached only through an accessor whose name says so (`expose_secret`).

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::RngCore as _;
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

const ELIDED: &str = "[secret elided]";

/// A symmetric SAS key (device, policy, group or enrollment key): the raw bytes, not base64.
pub struct SasKey(Zeroizing<Vec<u8>>);

/// Why a base64 key was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not standard base64 with padding.
    #[error("key is not valid base64")]
    NotBase64,
    /// The decoded key is shorter or longer than the allowed range.
    #[error("key must decode to {min}..={max} bytes, got {len}")]
    Length {
        /// decoded length
        len: usize,
        /// minimum accepted length
        min: usize,
        /// maximum accepted length
        max: usize,
    },
}

impl SasKey {
    /// Minimum decoded key length accepted from clients (API.md A7).
    pub const MIN_LEN: usize = 16;
    /// Maximum decoded key length accepted from clients (API.md A7).
    pub const MAX_LEN: usize = 64;

    /// 32 fresh random bytes from the OS CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new(vec![0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Wraps raw key bytes (any length; HMAC accepts all).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Decodes standard base64 and checks the length range of API.md A7.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| KeyError::NotBase64)?);
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&bytes.len()) {
            return Err(KeyError::Length {
                len: bytes.len(),
                min: Self::MIN_LEN,
                max: Self::MAX_LEN,
            });
        }
        Ok(Self(bytes))
    }

    /// The key as standard base64 with padding (the form clients see).
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(&*self.0))
    }

    /// The raw key bytes.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// An explicit copy of the secret.
    pub fn clone_secret(&self) -> Self {
        Self(self.0.clone())
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for SasKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(ELIDED)
    }
}

/// A private key in PKCS#8 DER form (CA keys, server-generated device keys).
pub struct PrivateKey(Zeroizing<Vec<u8>>);

impl PrivateKey {
    /// Wraps PKCS#8 DER bytes.
    pub fn from_pkcs8_der(der: Vec<u8>) -> Self {
        Self(Zeroizing::new(der))
    }

    /// Parses a `PRIVATE KEY` PEM block.
    pub fn from_pkcs8_pem(text: &str) -> Option<Self> {
        let block = pem::parse(text).ok()?;
        (block.tag() == "PRIVATE KEY").then(|| Self(Zeroizing::new(block.into_contents())))
    }

    /// PKCS#8 DER bytes.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// Unencrypted PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        let block = pem::Pem::new("PRIVATE KEY", self.0.to_vec());
        let text = Zeroizing::new(pem::encode_config(
            &block,
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        ));
        let mut contents = block.into_contents();
        zeroize::Zeroize::zeroize(&mut contents);
        text
    }

    /// An explicit copy of the secret.
    pub fn clone_secret(&self) -> Self {
        Self(self.0.clone())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(ELIDED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_secret() {
        let canary = b"canary-canary-canary-1234".to_vec();
        let key = SasKey::from_bytes(canary.clone());
        let pk = PrivateKey::from_pkcs8_der(canary);
        for printed in [format!("{key:?}"), format!("{pk:?}"), format!("{key:#?}")] {
            assert!(!printed.contains("canary"), "leaked: {printed}");
            assert!(!printed.contains(&*key.to_base64()), "leaked base64: {printed}");
            assert_eq!(printed, ELIDED);
        }
    }

    #[test]
    fn base64_keys_outside_16_to_64_bytes_are_refused() {
        assert_eq!(
            SasKey::from_base64(&STANDARD.encode([0u8; 15])).unwrap_err(),
            KeyError::Length { len: 15, min: 16, max: 64 }
        );
        assert!(SasKey::from_base64(&STANDARD.encode([0u8; 65])).is_err());
        assert!(SasKey::from_base64("not base64!").is_err());
        assert!(SasKey::from_base64(&STANDARD.encode([7u8; 32])).is_ok());
    }

    #[test]
    fn generated_keys_are_32_random_bytes() {
        let a = SasKey::generate();
        let b = SasKey::generate();
        assert_eq!(a.expose_secret().len(), 32);
        assert!(!a.ct_eq(&b));
        assert!(a.ct_eq(&a.clone_secret()));
    }
}
