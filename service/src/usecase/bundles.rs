//! One-time provisioning bundles.
//!
//! The token (256 random bits, URL-safe) is shown once and never stored: the database keeps
//! SHA-256(token), and the payload (for x509: the server-generated private key and its
//! certificate) is sealed under HKDF-SHA256(token, salt = bundle id). A stolen database plus
//! master key therefore does not open an unredeemed bundle. Redemption is exactly-once (one
//! conditional UPDATE); the payload is erased on redeem, cancel and expiry. SAS keys are read
//! from the registry at redemption time, never copied into the bundle.

use base64::Engine as _;
use rand::RngCore as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use super::certificates::record;
use super::devices::{self, Authentication};
use super::groups::Credential;
use super::{random_hex, Ctx};
use crate::authority::Authority;
use crate::store::bundles as rows;
pub use crate::store::bundles::BundleRow;
use crate::store::{certificates, Store, StoreError};

/// Longest bundle lifetime (30 days).
pub const MAX_TTL_SECS: i64 = 2_592_000;

/// The one-time token: secret, zeroized, never printed.
pub struct BundleToken(Zeroizing<String>);

impl std::fmt::Debug for BundleToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[secret elided]")
    }
}

impl BundleToken {
    fn generate() -> Self {
        let mut b = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut *b);
        Self(Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(*b)))
    }

    /// Parses the value of `Authorization: Bundle <token>`.
    pub fn from_header(value: &str) -> Option<Self> {
        let t = value.strip_prefix("Bundle ")?.trim();
        (t.len() >= 43
            && t.len() <= 256
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b)))
        .then(|| Self(Zeroizing::new(t.to_owned())))
    }

    /// The token text (shown once to the creator; the PKCS#12 password).
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the token, hex: what the database keeps (public; the token is not derivable).
    fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }

    /// The payload key: HKDF-SHA256(token, salt = bundle id).
    fn payload_key(&self, id: &str) -> Zeroizing<[u8; 32]> {
        let mut key = Zeroizing::new([0u8; 32]);
        let hk = hkdf::Hkdf::<Sha256>::new(Some(id.as_bytes()), self.0.as_bytes());
        // 32 bytes is far below HKDF-SHA256's 8160-byte output limit.
        let _ = hk.expand(b"provisiond bundle payload v1", &mut *key);
        key
    }
}

/// Why a bundle operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// invalid input
    #[error("{0}")]
    Invalid(String),
    /// unknown device (or outside the caller's scope)
    #[error("device not found")]
    DeviceNotFound,
    /// the device is disabled: no bundle is made or redeemed for it
    #[error("the device is disabled: enable it first (a pending bundle stays redeemable)")]
    DeviceDisabled,
    /// unknown bundle
    #[error("bundle not found")]
    NotFound,
    /// missing or wrong token
    #[error("missing or invalid bundle token")]
    Unauthorized,
    /// redeemed, expired or cancelled
    #[error("bundle {0}")]
    Gone(&'static str),
    /// not pending (cancel)
    #[error("bundle is {0}, only pending bundles can be cancelled")]
    NotPending(&'static str),
    /// storage
    #[error(transparent)]
    Store(#[from] StoreError),
    /// issuance / crypto
    #[error("internal: {0}")]
    Internal(String),
    /// the CA key could not sign (token unreachable, key missing)
    #[error(transparent)]
    Sign(ca::SignError),
}

impl From<devices::DeviceError> for BundleError {
    fn from(e: devices::DeviceError) -> Self {
        match e {
            devices::DeviceError::NotFound => BundleError::DeviceNotFound,
            devices::DeviceError::Store(s) => BundleError::Store(s),
            other => BundleError::Internal(other.to_string()),
        }
    }
}

/// Status of a bundle.
pub fn status(b: &BundleRow, now: i64) -> &'static str {
    if b.redeemed_at.is_some() {
        "redeemed"
    } else if b.cancelled_at.is_some() {
        "cancelled"
    } else if b.expires_at <= now {
        "expired"
    } else {
        "pending"
    }
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON document
    Json,
    /// tar of PEM files
    PemTar,
    /// PKCS#12 (PBES2/AES-256, SHA-256 MAC)
    Pkcs12,
}

impl Format {
    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "json" => Some(Format::Json),
            "pem-tar" => Some(Format::PemTar),
            "pkcs12" => Some(Format::Pkcs12),
            _ => None,
        }
    }

    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::PemTar => "pem-tar",
            Format::Pkcs12 => "pkcs12",
        }
    }
}

/// A bundle to create.
pub struct NewBundle {
    /// device
    pub device_id: String,
    /// what to include
    pub credential: Credential,
    /// output format
    pub format: Format,
    /// lifetime
    pub ttl_secs: i64,
}

/// Creates a bundle for an enabled device inside the caller's `scope`, bound to the device's
/// generation; returns `(id, token, expires_at)` — the token exists only in this answer.
pub async fn create(
    store: &Store,
    cx: &Ctx<'_>,
    authority: &Authority,
    base_url: &str,
    scope: Option<&crate::auth::Scope>,
    req: NewBundle,
) -> Result<(String, BundleToken, i64), BundleError> {
    let id = random_hex(16);
    let token = BundleToken::generate();
    let expires_at = cx.now + req.ttl_secs;
    let mut tx = store.begin().await?;
    let device = crate::store::devices::get(&mut tx, &req.device_id)
        .await?
        .filter(|d| scope.is_none_or(|s| s.covers_device(&d.device_id, d.owner_group())))
        .ok_or(BundleError::DeviceNotFound)?;
    if device.status != "enabled" {
        return Err(BundleError::DeviceDisabled);
    }
    if req.credential.sas() && device.auth_type != "sas" {
        return Err(BundleError::Invalid("the device does not authenticate with SAS keys".into()));
    }
    let device_generation = Some(device.generation_id.clone());
    let mut payload = json!({});
    if req.credential.x509() {
        let (key, public) = ca::issue::generate_key(ca::KeyType::P256)
            .map_err(|e| BundleError::Internal(e.to_string()))?;
        let issuer = authority.active();
        let cert =
            crate::signing::issue_device(authority, &public, (&req.device_id, base_url), cx.now)
                .await
                .map_err(|e| match e {
                    ca::IssueError::Sign(s) => BundleError::Sign(s),
                    other => BundleError::Internal(other.to_string()),
                })?;
        certificates::insert(
            &mut tx,
            &record(&cert, Some(&req.device_id), &issuer.id(), "device", cx.now),
        )
        .await?;
        payload = json!({
            "private_key": *key.to_pkcs8_pem(),
            "certificate": cert.pem(),
            "certificate_chain": format!("{}{}", cert.pem(), issuer.cert_pem()),
            "ca_chain": authority.chain_pem(cx.now),
        });
    }
    let plaintext = Zeroizing::new(payload.to_string());
    if let Value::Object(mut m) = payload {
        if let Some(Value::String(s)) = m.get_mut("private_key") {
            zeroize::Zeroize::zeroize(s);
        }
    }
    let sealed = seal(&token, &id, plaintext.as_bytes())?;
    rows::insert(
        &mut tx,
        &BundleRow {
            id: id.clone(),
            device_id: req.device_id.clone(),
            credential: req.credential.as_str().to_owned(),
            format: req.format.as_str().to_owned(),
            token_sha256: token.digest(),
            payload: Some(sealed),
            created_at: cx.now,
            expires_at,
            redeemed_at: None,
            redeemed_from: None,
            cancelled_at: None,
            device_generation,
        },
    )
    .await?;
    cx.audit(&mut tx, store.dialect(), "bundle.create", &format!("{}/{id}", req.device_id)).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok((id, token, expires_at))
}

fn seal(token: &BundleToken, id: &str, plaintext: &[u8]) -> Result<Vec<u8>, BundleError> {
    let aad = format!("bundles:payload:{id}");
    Ok(crate::seal::aead_seal(&token.payload_key(id), aad.as_bytes(), plaintext))
}

/// Opens a sealed payload with the token (the only way to open it).
pub fn open_payload(token: &BundleToken, id: &str, blob: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let aad = format!("bundles:payload:{id}");
    crate::seal::aead_open(&token.payload_key(id), aad.as_bytes(), blob)
}

/// The serial of the certificate inside an opened payload (x509 bundles).
fn payload_serial(payload: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    let der = pem::parse(v.get("certificate")?.as_str()?).ok()?.into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some(ca::issue::serial_hex(cert.raw_serial()))
}

/// What a redemption hands out.
pub struct Redeemed {
    /// device
    pub device_id: String,
    /// credential kind
    pub credential: Credential,
    /// format
    pub format: Format,
    /// decrypted payload (x509 parts)
    pub payload: Zeroizing<Vec<u8>>,
    /// device SAS keys at redemption time (base64)
    pub sas_keys: Option<(Zeroizing<String>, Zeroizing<String>)>,
    /// the token, which is the PKCS#12 password
    pub password: Option<Zeroizing<String>>,
}

/// Redeems a bundle, exactly once.
pub async fn redeem(
    store: &Store,
    cx: &Ctx<'_>,
    id: &str,
    token: Option<BundleToken>,
) -> Result<Redeemed, BundleError> {
    let row = {
        let mut conn = store.conn().await?;
        rows::get(&mut conn, id).await?.ok_or(BundleError::NotFound)?
    };
    let token = token.ok_or(BundleError::Unauthorized)?;
    if !bool::from(token.digest().as_bytes().ct_eq(row.token_sha256.as_bytes())) {
        return Err(BundleError::Unauthorized);
    }
    let mut tx = store.begin().await?;
    let current = rows::get(&mut tx, id).await?.ok_or(BundleError::NotFound)?;
    let state = status(&current, cx.now);
    if state != "pending" {
        return Err(BundleError::Gone(match state {
            "redeemed" => "already redeemed",
            "cancelled" => "cancelled",
            _ => "expired",
        }));
    }
    let credential = Credential::parse(&current.credential).unwrap_or(Credential::X509);
    let format = Format::parse(&current.format).unwrap_or(Format::Json);
    // The device it was made for: not deleted since (even if the id exists again), enabled.
    let device_row = crate::store::devices::get(&mut tx, &current.device_id)
        .await?
        .filter(|d| current.device_generation.as_deref() == Some(d.generation_id.as_str()))
        .ok_or(BundleError::Gone("made for a device that no longer exists"))?;
    if device_row.status != "enabled" {
        return Err(BundleError::DeviceDisabled);
    }
    let sas_keys = if credential.sas() {
        match devices::open(cx.ring, device_row)?.auth {
            Authentication::Sas { primary, secondary } => {
                Some((primary.to_base64(), secondary.to_base64()))
            }
            _ => return Err(BundleError::Gone("device no longer uses SAS keys")),
        }
    } else {
        None
    };
    let blob = current.payload.clone().ok_or(BundleError::Gone("expired"))?;
    let payload = open_payload(&token, id, &blob).ok_or(BundleError::Unauthorized)?;
    // Its certificate may have been revoked since (the device was disabled, then enabled
    // again): a dead credential is never handed out; the bundle is cancelled instead.
    if let Some(serial) = payload_serial(&payload) {
        let revoked =
            certificates::get(&mut tx, &serial).await?.is_none_or(|c| c.revoked_at.is_some());
        if revoked {
            rows::cancel(&mut tx, id, cx.now).await?;
            tx.commit().await.map_err(StoreError::from)?;
            return Err(BundleError::Gone(
                "cancelled: its certificate was revoked; create a new bundle",
            ));
        }
    }
    let from = cx.actor.addr.clone().unwrap_or_else(|| "unknown".into());
    if !rows::mark_redeemed(&mut tx, id, cx.now, &from).await? {
        return Err(BundleError::Gone("already redeemed"));
    }
    cx.audit(&mut tx, store.dialect(), "bundle.redeem", &format!("{}/{id}", current.device_id))
        .await?;
    tx.commit().await.map_err(StoreError::from)?;
    let password = Some(Zeroizing::new(token.expose_secret().to_owned()));
    Ok(Redeemed { device_id: current.device_id, credential, format, payload, sas_keys, password })
}

/// A bundle as `scope` may see it: one whose device id the scope admits and whose device (if
/// it still exists) it covers.
async fn visible(
    conn: &mut crate::store::Conn,
    scope: Option<&crate::auth::Scope>,
    id: &str,
) -> Result<BundleRow, BundleError> {
    let row = rows::get(&mut *conn, id).await?.ok_or(BundleError::NotFound)?;
    if let Some(scope) = scope {
        if !super::devices::in_scope(&mut *conn, scope, &row.device_id).await? {
            return Err(BundleError::NotFound);
        }
    }
    Ok(row)
}

/// Reads a bundle's record (status only: never the token or payload).
pub async fn get(
    store: &Store,
    scope: Option<&crate::auth::Scope>,
    id: &str,
) -> Result<BundleRow, BundleError> {
    let mut conn = store.conn().await?;
    visible(&mut conn, scope, id).await
}

/// Cancels a pending bundle (payload erased).
pub async fn cancel(
    store: &Store,
    cx: &Ctx<'_>,
    scope: Option<&crate::auth::Scope>,
    id: &str,
) -> Result<(), BundleError> {
    let mut tx = store.begin().await?;
    let row = visible(&mut tx, scope, id).await?;
    if !rows::cancel(&mut tx, id, cx.now).await? {
        return Err(BundleError::NotPending(status(&row, cx.now)));
    }
    cx.audit(&mut tx, store.dialect(), "bundle.cancel", &format!("{}/{id}", row.device_id)).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(())
}

/// One page of bundles (records only) in id order after `after`: of one device and one status
/// if given, inside `scope`. Returns them and whether more follow.
pub async fn list(
    store: &Store,
    scope: Option<&crate::auth::Scope>,
    device_id: Option<&str>,
    state: Option<&str>,
    after: &str,
    limit: i64,
    now: i64,
) -> Result<(Vec<BundleRow>, bool), BundleError> {
    let (rows, more) = super::page_where(
        after,
        limit,
        |r: &rows::OwnedBundleRow| r.bundle.id.as_str(),
        |r| {
            scope.is_none_or(|s| s.covers_device(&r.bundle.device_id, r.owner.group()))
                && state.is_none_or(|want| status(&r.bundle, now) == want)
        },
        |after, n| async move { rows::page(&mut *store.conn().await?, device_id, &after, n).await },
    )
    .await?;
    Ok((rows.into_iter().map(|r| r.bundle).collect(), more))
}
