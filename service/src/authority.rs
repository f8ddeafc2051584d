//! The CA as the running service sees it: every issuer loaded from the database (intermediate
//! keys unsealed, or found by label in the PKCS#11 token), which one issues now, and the public
//! chain.

use std::sync::Arc;

use ca::authority::{chain_pem, Issuer};
use ca::PrivateKey;

use crate::pkcs11::Token;
use crate::seal::{KeyRing, SealContext, SealError};
use crate::store::issuers::IssuerRow;
use crate::store::{flag, StoreError};

/// Why the CA could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityLoadError {
    /// storage failed
    #[error(transparent)]
    Store(#[from] StoreError),
    /// a sealed CA key did not open
    #[error(transparent)]
    Seal(#[from] SealError),
    /// a stored CA is corrupt
    #[error("stored CA {id} is invalid: {reason}")]
    Invalid {
        /// issuer id
        id: String,
        /// what is wrong
        reason: String,
    },
    /// no root or no active intermediate
    #[error("the database holds no active CA: run `provisiond init`")]
    Missing,
    /// a CA key lives in a PKCS#11 token but none is configured
    #[error("the CA key `{0}` is in a PKCS#11 token: set ca_key_store = \"pkcs11\", pkcs11_module and pkcs11_token_label")]
    NoToken(String),
    /// the token has no key under the active intermediate's label
    #[error(transparent)]
    Token(#[from] crate::pkcs11::TokenError),
}

/// The columns of an `issuers` row that hold a CA key: the sealed PKCS#8 of a software key, or
/// the label of a key in the token (never both).
pub fn key_columns(
    issuer: &Issuer,
    ring: &KeyRing,
) -> (Option<i64>, Option<Vec<u8>>, Option<String>) {
    let id = issuer.id();
    match (issuer.private_key(), issuer.signer().key_label()) {
        (Some(key), _) => {
            let ctx = SealContext { table: "issuers", column: "private_key", row_id: &id };
            (
                Some(i64::from(ring.current_version())),
                Some(ring.seal(ctx, key.expose_secret())),
                None,
            )
        }
        (None, label) => (None, None, label.map(str::to_owned)),
    }
}

/// One CA certificate; intermediates carry their signing key.
pub struct CaEntry {
    /// lowercase hex SKI
    pub id: String,
    /// certificate DER
    pub cert_der: Vec<u8>,
    /// notAfter
    pub not_after: i64,
    /// the root?
    pub is_root: bool,
    /// signing capability (intermediates, and a root whose key is in the token)
    pub issuer: Option<Issuer>,
    /// PKCS#11 label of the key, when it lives in the token
    pub key_label: Option<String>,
}

/// The loaded hierarchy.
pub struct Authority {
    entries: Vec<Arc<CaEntry>>,
    active: Arc<CaEntry>,
    root: Arc<CaEntry>,
}

impl Authority {
    /// Builds from stored rows, unsealing intermediate keys and binding token keys to `token`.
    pub fn load(
        rows: Vec<IssuerRow>,
        ring: &KeyRing,
        token: Option<&Arc<Token>>,
    ) -> Result<Self, AuthorityLoadError> {
        let mut entries = Vec::new();
        let (mut active, mut root) = (None, None);
        for row in rows {
            let invalid = |e: ca::AuthorityError| AuthorityLoadError::Invalid {
                id: row.id.clone(),
                reason: e.to_string(),
            };
            let issuer = match (&row.private_key, &row.key_label) {
                (None, Some(label)) => {
                    let token = token.ok_or_else(|| AuthorityLoadError::NoToken(label.clone()))?;
                    let (scheme, public) =
                        ca::authority::public_key_of(&row.cert_der).map_err(invalid)?;
                    let signer = token.signer_for(label, scheme, public);
                    Some(Issuer::with_signer(&row.cert_der, Arc::new(signer)).map_err(invalid)?)
                }
                (Some(sealed), _) => {
                    let ctx =
                        SealContext { table: "issuers", column: "private_key", row_id: &row.id };
                    let key = PrivateKey::from_pkcs8_der(ring.open(ctx, sealed)?.to_vec());
                    Some(Issuer::from_der(&row.cert_der, &key).map_err(|e| {
                        AuthorityLoadError::Invalid { id: row.id.clone(), reason: e.to_string() }
                    })?)
                }
                (None, None) => None,
            };
            let entry = Arc::new(CaEntry {
                id: row.id.clone(),
                cert_der: row.cert_der,
                not_after: row.not_after,
                is_root: flag(row.is_root),
                issuer,
                key_label: row.key_label,
            });
            if entry.is_root {
                root = Some(entry.clone());
            } else if flag(row.active) && entry.issuer.is_some() {
                active = Some(entry.clone());
            }
            entries.push(entry);
        }
        match (active, root) {
            (Some(active), Some(root)) => Ok(Self { entries, active, root }),
            _ => Err(AuthorityLoadError::Missing),
        }
    }

    /// The intermediate that issues now.
    pub fn active(&self) -> &Issuer {
        #[allow(clippy::expect_used)]
        // invariant: `load` only selects an active entry that has an issuer.
        self.active.issuer.as_ref().expect("active CA has a key")
    }

    /// The active intermediate's entry.
    pub fn active_entry(&self) -> &CaEntry {
        &self.active
    }

    /// The active intermediate's entry, shared (to sign on another thread).
    pub fn active_shared(&self) -> Arc<CaEntry> {
        self.active.clone()
    }

    /// The root certificate.
    pub fn root(&self) -> &CaEntry {
        &self.root
    }

    /// Every CA (root and intermediates).
    pub fn entries(&self) -> &[Arc<CaEntry>] {
        &self.entries
    }

    /// Finds a CA by id (case-insensitive hex).
    pub fn find(&self, id: &str) -> Option<&Arc<CaEntry>> {
        let id = id.to_ascii_lowercase();
        self.entries.iter().find(|e| e.id == id)
    }

    /// Intermediates that can still vouch for live certificates, active first.
    pub fn live_intermediates(&self, now: i64) -> Vec<&Arc<CaEntry>> {
        let mut v: Vec<&Arc<CaEntry>> =
            self.entries.iter().filter(|e| !e.is_root && e.not_after > now).collect();
        v.sort_by_key(|e| e.id != self.active.id);
        v
    }

    /// The public chain: current intermediate first, other live intermediates, root last.
    pub fn chain_pem(&self, now: i64) -> String {
        let mut ders: Vec<&[u8]> =
            self.live_intermediates(now).iter().map(|e| e.cert_der.as_slice()).collect();
        ders.push(&self.root.cert_der);
        chain_pem(ders)
    }
}
