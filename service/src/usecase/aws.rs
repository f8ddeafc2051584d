//! AWS IoT fleet provisioning (API.md A26, A30), the part before registration: a claim device
//! asks for a certificate (from its CSR, or for a key the server generates) and receives it
//! with a certificate ownership token. The certificate is issued by the active intermediate
//! with CN = its serial and no SAN, recorded with no device and **on hold** (revoked
//! `certificate_hold`, so CRL and OCSP refuse it), and the token — 256 random bits, stored only
//! as SHA-256, valid [`TOKEN_TTL_SECS`], once — is bound to that certificate, the group and the
//! connection. RegisterThing then goes through the registration core
//! ([`crate::usecase::register`]) with the held certificate, which consumes the token and lifts
//! the hold in the registration's transaction. A token that expires unused turns the hold into
//! `cessation_of_operation` at the next periodic sweep ([`expire_holds`], every few seconds,
//! under the `sweep` lease).

use ca::csr::SubjectKey;
use ca::{CsrError, IssuedCertificate};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::groups::Group;
use super::register::HeldCertificate;
use super::{Actor, Ctx};
use crate::audit::AuditKey;
use crate::authority::Authority;
use crate::store::aws::{self as rows, OwnershipTokenRow};
use crate::store::certificates::{self, CertificateRow};
use crate::store::{Store, StoreError};

/// Lifetime of a certificate ownership token (AWS: one hour).
pub const TOKEN_TTL_SECS: i64 = 3600;
/// Unused, unexpired tokens one group may have at a time. A device registers seconds after it
/// creates its certificate, so a fleet rarely has more than a few pending; the bound is what a
/// leaked claim certificate can make the server create per hour and group (each is a
/// certificate row that stays, revoked, in the CRL until it expires, and a token row for an
/// hour). Disable the group (or remove the claim CA) when a claim certificate leaks.
pub const MAX_PENDING_PER_GROUP: i64 = 1_000;

/// Why a certificate was not created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AwsError {
    /// the CSR broke a rule
    #[error("CSR rejected: {0}")]
    Csr(#[from] CsrError),
    /// the public key's certificate was revoked for key or CA compromise
    #[error("the certificate of this key was revoked for compromise: generate a new key")]
    KeyCompromised,
    /// the group has [`MAX_PENDING_PER_GROUP`] certificates waiting for RegisterThing
    #[error("too many certificates of this fleet wait for RegisterThing; retry later")]
    TooManyPending,
    /// signing failed
    #[error(transparent)]
    Issue(#[from] ca::IssueError),
    /// storage
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A certificate ownership token: secret, zeroized, never printed or stored.
pub struct OwnershipToken(Zeroizing<String>);

impl std::fmt::Debug for OwnershipToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[secret elided]")
    }
}

impl OwnershipToken {
    fn generate() -> Self {
        use base64::Engine as _;
        let mut b = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut *b);
        Self(Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(*b)))
    }

    /// The token text (sent once, to the connection that asked).
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

/// SHA-256 of a token, hex: what the database keeps (public; the token is not derivable from
/// it, having 256 random bits).
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A held certificate and its ownership token.
#[derive(Debug)]
pub struct HeldIssued {
    /// the certificate (on hold)
    pub cert: IssuedCertificate,
    /// the token that claims it
    pub token: OwnershipToken,
    /// the issuing intermediate, DER
    pub issuer_der: Vec<u8>,
}

/// Issues a held certificate for `key` to a claim device of `group` on connection
/// `connection_id`, and its ownership token; certificate row, token row and audit row commit
/// together.
#[tracing::instrument(skip_all, fields(group = %group.id))]
pub async fn create_certificate(
    store: &Store,
    cx: &Ctx<'_>,
    authority: &Authority,
    base_url: &str,
    group: &Group,
    key: &SubjectKey,
    connection_id: &str,
) -> Result<HeldIssued, AwsError> {
    if !group.allowed_keys.contains(&key.key_type()) {
        return Err(CsrError::KeyTypeNotAllowed { key_type: key.key_type() }.into());
    }
    {
        let mut conn = store.conn().await?;
        if certificates::is_compromised(&mut conn, &key.fingerprint()).await? {
            return Err(AwsError::KeyCompromised);
        }
        if rows::pending_in_group(&mut conn, &group.id, cx.now).await? >= MAX_PENDING_PER_GROUP {
            return Err(AwsError::TooManyPending);
        }
    }
    let entry = authority.active_shared();
    let issuer_der = entry.cert_der.clone();
    let (key_owned, base_url, now) = (key.clone(), base_url.to_owned(), cx.now);
    let validity_secs = group.validity_days.max(1) * 86_400;
    let cert = crate::signing::on_signer(entry.clone(), move |issuer| {
        let urls = ca::issue::RevocationUrls { base_url: Some(base_url) };
        let profile = ca::issue::SerialNamedProfile { validity_secs, urls: &urls };
        ca::issue::issue_serial_named(issuer, &key_owned, &profile, now)
    })
    .await?;
    let token = OwnershipToken::generate();
    let mut tx = store.begin().await?;
    let row = CertificateRow {
        serial: cert.serial.clone(),
        device_id: None,
        issuer_id: entry.id.clone(),
        profile: "device".into(),
        der: cert.der.clone(),
        not_before: cert.not_before,
        not_after: cert.not_after,
        revoked_at: Some(cx.now),
        revocation_reason: Some("certificate_hold".into()),
        created_at: cx.now,
    };
    certificates::insert(&mut tx, &row).await?;
    rows::mark_crl_stale(&mut tx, &cert.serial).await?;
    rows::insert_token(
        &mut tx,
        &OwnershipTokenRow {
            token_sha256: token_digest(token.expose_secret()),
            serial: cert.serial.clone(),
            group_id: group.id.clone(),
            connection_id: connection_id.to_owned(),
            created_at: cx.now,
            expires_at: cx.now + TOKEN_TTL_SECS,
            used_at: None,
            used_for: None,
        },
    )
    .await?;
    cx.audit(&mut tx, store.dialect(), "certificate.hold", &cert.serial).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(HeldIssued { cert, token, issuer_der })
}

/// Why a token does not claim a held certificate (all answered alike: an invalid token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// unknown, spent, expired, or issued to another group or connection
    Invalid,
    /// its certificate is no longer on hold (revoked meanwhile)
    NotHeld,
}

/// The held certificate `token` claims for `group` on `connection_id`, read before the
/// registration (the registration consumes the token under the same conditions, once).
pub async fn held_for_token(
    store: &Store,
    authority: &Authority,
    group_id: &str,
    connection_id: &str,
    token: &str,
    now: i64,
) -> Result<Result<HeldCertificate, TokenRefusal>, StoreError> {
    let mut conn = store.conn().await?;
    let Some(row) = rows::token(&mut conn, &token_digest(token)).await? else {
        return Ok(Err(TokenRefusal::Invalid));
    };
    let usable = row.group_id == group_id
        && row.connection_id == connection_id
        && row.used_at.is_none()
        && row.expires_at > now;
    if !usable {
        return Ok(Err(TokenRefusal::Invalid));
    }
    let Some(cert) = certificates::get(&mut conn, &row.serial).await? else {
        return Ok(Err(TokenRefusal::Invalid));
    };
    let issuer = authority.find(&cert.issuer_id);
    let fingerprint = ca::csr::certificate_key_fingerprint(&cert.der);
    match (issuer, fingerprint) {
        (Some(issuer), Some(key_fingerprint))
            if cert.device_id.is_none()
                && cert.revocation_reason.as_deref() == Some("certificate_hold") =>
        {
            Ok(Ok(HeldCertificate {
                token: row,
                der: cert.der,
                issuer_der: issuer.cert_der.clone(),
                key_fingerprint,
            }))
        }
        _ => Ok(Err(TokenRefusal::NotHeld)),
    }
}

/// The sweep: holds whose token expired unused become `cessation_of_operation` (audited one
/// row each), expired token rows go. Returns how many holds expired.
pub async fn expire_holds(
    store: &Store,
    audit_key: &AuditKey,
    now: i64,
) -> Result<usize, StoreError> {
    if !rows::any_expired(&mut *store.conn().await?, now).await? {
        return Ok(0);
    }
    let mut tx = store.begin().await?;
    let expired = rows::expire_holds(&mut tx, now).await?;
    let actor = Actor { name: "provisiond".into(), addr: None };
    for serial in &expired {
        crate::audit::append(
            &mut tx,
            store.dialect(),
            audit_key,
            &actor.did("certificate.hold.expire", serial),
            now,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(expired.len())
}
