//! Encryption at rest for secret columns.
//!
//! AES-256-GCM with a random 96-bit nonce; the additional data is
//! `"{table}:{column}:{row id}:{key version}"`, so a ciphertext copied to another row, column or
//! key version fails to open. Blob layout: `version (u32 BE) ‖ nonce (12) ‖ ciphertext+tag`.
//! The key ring comes from the master key file (mode 0600, outside the database): one line
//! `v{N}:{base64 32 bytes}` per version; the highest version seals, every listed version opens,
//! which is what lets `rotate-master-key` re-seal online.

use std::collections::BTreeMap;
use std::path::Path;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::RngCore as _;
use zeroize::Zeroizing;

/// Why sealing or opening failed. Never contains key or plaintext bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The blob is shorter than version + nonce + tag.
    #[error("sealed value is truncated")]
    Truncated,
    /// Authentication failed: wrong key, wrong row/column, or tampered data.
    #[error("sealed value does not open under {context} (wrong master key, moved or tampered)")]
    OpenFailed {
        /// the AAD context that was tried
        context: String,
    },
    /// The blob names a key version the ring does not have.
    #[error("sealed value uses master key version {0}, which the key ring does not hold")]
    UnknownVersion(u32),
    /// The master key file is missing.
    #[error(
        "master key file {0} not found: run `provisiond init` to create one, or point \
         `master_key_file` / PROVISIOND_MASTER_KEY_FILE at it"
    )]
    MissingKeyFile(String),
    /// The master key file is not in the expected format.
    #[error("master key file {0} is malformed (expected lines `v<N>:<base64 of 32 bytes>`)")]
    MalformedKeyFile(String),
    /// I/O on the key file failed.
    #[error("cannot read master key file {path}: {reason}")]
    Io {
        /// file
        path: String,
        /// error
        reason: String,
    },
}

/// Where a sealed value lives: the AAD binds the ciphertext to it.
#[derive(Debug, Clone, Copy)]
pub struct SealContext<'a> {
    /// table name
    pub table: &'a str,
    /// column name
    pub column: &'a str,
    /// primary key of the row
    pub row_id: &'a str,
}

impl SealContext<'_> {
    fn aad(&self, version: u32) -> String {
        format!("{}:{}:{}:{}", self.table, self.column, self.row_id, version)
    }
}

/// A 256-bit data-encryption key.
struct MasterKey(Zeroizing<[u8; 32]>);

/// The set of master key versions.
pub struct KeyRing {
    keys: BTreeMap<u32, MasterKey>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").field("versions", &self.keys.keys().collect::<Vec<_>>()).finish()
    }
}

impl KeyRing {
    /// A ring with one fresh random key, version 1.
    pub fn generate() -> Self {
        let mut ring = Self { keys: BTreeMap::new() };
        ring.keys.insert(1, random_key());
        ring
    }

    /// Reads the key file.
    pub fn load(path: &Path) -> Result<Self, SealError> {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SealError::MissingKeyFile(shown))
            }
            Err(e) => return Err(SealError::Io { path: shown, reason: e.to_string() }),
        };
        Self::parse(&text).ok_or(SealError::MalformedKeyFile(shown))
    }

    /// Parses key file text (as [`KeyRing::to_file_text`] writes it).
    pub fn parse_text(text: &str) -> Option<Self> {
        Self::parse(text)
    }

    fn parse(text: &str) -> Option<Self> {
        let mut keys = BTreeMap::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (v, b64) = line.split_once(':')?;
            let version: u32 = v.strip_prefix('v')?.parse().ok()?;
            let bytes = Zeroizing::new(STANDARD.decode(b64).ok()?);
            let mut key = Zeroizing::new([0u8; 32]);
            if bytes.len() != 32 {
                return None;
            }
            key.copy_from_slice(&bytes);
            keys.insert(version, MasterKey(key));
        }
        (!keys.is_empty()).then_some(Self { keys })
    }

    /// The key file text.
    pub fn to_file_text(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::from(
            "# provisiond master key ring: keep this file secret (mode 0600) and backed up.\n",
        ));
        for (v, k) in &self.keys {
            out.push_str(&format!("v{v}:{}\n", STANDARD.encode(*k.0)));
        }
        out
    }

    /// The version new values are sealed with.
    pub fn current_version(&self) -> u32 {
        self.keys.keys().next_back().copied().unwrap_or(1)
    }

    /// Every version in the ring, ascending.
    pub fn versions(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// Adds a fresh key as the new current version and returns it.
    pub fn add_version(&mut self) -> u32 {
        let v = self.current_version() + 1;
        self.keys.insert(v, random_key());
        v
    }

    /// Drops every version below `keep_from`.
    pub fn retire_below(&mut self, keep_from: u32) {
        self.keys.retain(|v, _| *v >= keep_from);
    }

    /// Seals `plaintext` with the current key.
    pub fn seal(&self, ctx: SealContext<'_>, plaintext: &[u8]) -> Vec<u8> {
        let version = self.current_version();
        let Some(key) = self.keys.get(&version) else {
            return Vec::new(); // unreachable: the ring is never empty (parse/generate)
        };
        let sealed = aead_seal(&key.0, ctx.aad(version).as_bytes(), plaintext);
        let mut blob = Vec::with_capacity(4 + sealed.len());
        blob.extend_from_slice(&version.to_be_bytes());
        blob.extend_from_slice(&sealed);
        blob
    }

    /// Opens a sealed value bound to `ctx`.
    pub fn open(&self, ctx: SealContext<'_>, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if blob.len() < 4 + 12 + 16 {
            return Err(SealError::Truncated);
        }
        let version = u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]);
        let key = self.keys.get(&version).ok_or(SealError::UnknownVersion(version))?;
        aead_open(&key.0, ctx.aad(version).as_bytes(), &blob[4..]).ok_or_else(|| {
            SealError::OpenFailed {
                context: format!("{}:{}:{}", ctx.table, ctx.column, ctx.row_id),
            }
        })
    }

    /// The key version a blob was sealed with.
    pub fn version_of(blob: &[u8]) -> Option<u32> {
        blob.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// THE AES-256-GCM of provisiond: `nonce (12 random bytes) ‖ ciphertext ‖ tag`, bound to
/// `aad`. Every sealed thing (columns, bundle payloads, spooled answers) goes through it.
pub fn aead_seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(key.into());
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    // AES-GCM encryption only fails for inputs beyond 64 GiB.
    let ct = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
        .unwrap_or_default();
    [nonce.as_slice(), &ct].concat()
}

/// Opens what [`aead_seal`] made under the same key and `aad` (None if anything differs).
pub fn aead_open(key: &[u8; 32], aad: &[u8], blob: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if blob.len() < 12 + 16 {
        return None;
    }
    let cipher = Aes256Gcm::new(key.into());
    cipher
        .decrypt(Nonce::from_slice(&blob[..12]), Payload { msg: &blob[12..], aad })
        .ok()
        .map(Zeroizing::new)
}

fn random_key() -> MasterKey {
    let mut key = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut *key);
    MasterKey(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTX: SealContext<'static> =
        SealContext { table: "policies", column: "primary_key", row_id: "owner" };

    #[test]
    fn round_trip_and_binding_to_row_column_and_version() {
        let ring = KeyRing::generate();
        let blob = ring.seal(CTX, b"secret");
        assert_eq!(&*ring.open(CTX, &blob).unwrap(), b"secret");
        let other_row = SealContext { row_id: "service", ..CTX };
        assert!(matches!(ring.open(other_row, &blob), Err(SealError::OpenFailed { .. })));
        let other_col = SealContext { column: "secondary_key", ..CTX };
        assert!(ring.open(other_col, &blob).is_err());
        let mut tampered = blob.clone();
        tampered[20] ^= 1;
        assert!(ring.open(CTX, &tampered).is_err());
        let mut wrong_version = blob;
        wrong_version[3] = 2;
        assert!(matches!(ring.open(CTX, &wrong_version), Err(SealError::UnknownVersion(2))));
    }

    #[test]
    fn another_master_key_cannot_open() {
        let blob = KeyRing::generate().seal(CTX, b"secret");
        assert!(KeyRing::generate().open(CTX, &blob).is_err());
    }

    #[test]
    fn rotation_keeps_old_values_readable_until_retired() {
        let mut ring = KeyRing::generate();
        let old = ring.seal(CTX, b"v1 value");
        assert_eq!(ring.add_version(), 2);
        let new = ring.seal(CTX, b"v2 value");
        assert_eq!(KeyRing::version_of(&new), Some(2));
        assert_eq!(&*ring.open(CTX, &old).unwrap(), b"v1 value");
        let reparsed = KeyRing::parse(&ring.to_file_text()).unwrap();
        assert_eq!(&*reparsed.open(CTX, &new).unwrap(), b"v2 value");
        ring.retire_below(2);
        assert!(matches!(ring.open(CTX, &old), Err(SealError::UnknownVersion(1))));
    }

    #[test]
    fn debug_shows_versions_only() {
        let ring = KeyRing::generate();
        let text = ring.to_file_text();
        let b64 = text.lines().nth(1).unwrap().split_once(':').unwrap().1.to_owned();
        assert!(!format!("{ring:?}").contains(&b64));
    }
}
