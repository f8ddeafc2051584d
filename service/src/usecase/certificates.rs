//! Certificates for devices: admin-side issuance from a CSR, and listing.

use ca::csr::{CsrPolicy, VerifiedCsr};
use ca::{CsrError, IssuedCertificate};

use super::Ctx;
use crate::authority::Authority;
use crate::store::certificates as rows;
pub use crate::store::certificates::CertificateRow;
use crate::store::{Store, StoreError};

/// Default lifetime of a device certificate.
pub const DEFAULT_VALIDITY_SECS: i64 = 365 * 86_400;

/// Why issuance failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// the CSR broke a rule of the profile
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// the device is disabled: nothing is issued for it
    #[error("the device is disabled: enable it before issuing certificates for it")]
    DeviceDisabled,
    /// unknown device (or outside the caller's scope)
    #[error("device not found")]
    DeviceNotFound,
    /// the key's certificate was revoked for compromise
    #[error("the certificate of this key was revoked for compromise: send a CSR for a new key")]
    KeyCompromised,
    /// signing failed
    #[error(transparent)]
    Issue(#[from] ca::IssueError),
    /// storage
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An issued certificate with its chain.
#[derive(Debug)]
pub struct Issued {
    /// the certificate
    pub cert: IssuedCertificate,
    /// PEM: leaf then the issuing intermediate
    pub chain_pem: String,
}

/// Verifies `csr_pem` for `device_id` and issues a device certificate from the active
/// intermediate, recording it (and an audit row) in one transaction.
pub async fn issue_for_device(
    store: &Store,
    cx: &Ctx<'_>,
    authority: &Authority,
    base_url: &str,
    scope: Option<&crate::auth::Scope>,
    device_id: &str,
    csr: &[u8],
) -> Result<Issued, CertificateError> {
    let mut tx = store.begin().await?;
    let device = crate::store::devices::get(&mut tx, device_id)
        .await?
        .filter(|d| scope.is_none_or(|s| s.covers_device(device_id, d.owner_group())))
        .ok_or(CertificateError::DeviceNotFound)?;
    if device.status != "enabled" {
        return Err(CertificateError::DeviceDisabled);
    }
    let verified = VerifiedCsr::parse(csr, &CsrPolicy::device(device_id))?;
    if rows::is_compromised(&mut tx, &verified.subject_key().fingerprint()).await? {
        return Err(CertificateError::KeyCompromised);
    }
    let issuer = authority.active();
    let key = verified.subject_key();
    let cert = crate::signing::issue_device(authority, key, (device_id, base_url), cx.now).await?;
    rows::insert(&mut tx, &record(&cert, Some(device_id), &issuer.id(), "device", cx.now)).await?;
    cx.audit(
        &mut tx,
        store.dialect(),
        "certificate.issue",
        &format!("{device_id}/{}", cert.serial),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    let chain_pem = format!("{}{}", cert.pem(), issuer.cert_pem());
    Ok(Issued { cert, chain_pem })
}

/// The row recording an issued certificate.
pub fn record(
    cert: &IssuedCertificate,
    device_id: Option<&str>,
    issuer_id: &str,
    profile: &str,
    now: i64,
) -> CertificateRow {
    CertificateRow {
        serial: cert.serial.clone(),
        device_id: device_id.map(str::to_owned),
        issuer_id: issuer_id.to_owned(),
        profile: profile.to_owned(),
        der: cert.der.clone(),
        not_before: cert.not_before,
        not_after: cert.not_after,
        revoked_at: None,
        revocation_reason: None,
        created_at: now,
    }
}

/// One page of certificates in serial order after `after`: of one device if given, and only
/// those inside `scope` (device certificates of devices it covers). Returns the items and
/// whether more follow.
pub async fn list(
    store: &Store,
    scope: Option<&crate::auth::Scope>,
    device_id: Option<&str>,
    kind: Option<&str>,
    after: &str,
    limit: i64,
) -> Result<(Vec<CertificateRow>, bool), StoreError> {
    let prefix = scope.and_then(|s| s.device_id_prefix.as_deref());
    let (rows, more) = super::page_where(
        after,
        limit,
        |r: &rows::OwnedCertificateRow| r.cert.serial.as_str(),
        |r| {
            scope.is_none_or(|s| {
                r.cert.profile == "device"
                    && r.cert
                        .device_id
                        .as_deref()
                        .is_some_and(|d| s.covers_device(d, r.owner.group()))
            })
        },
        |after, n| async move {
            rows::page(&mut *store.conn().await?, device_id, prefix, kind, &after, n).await
        },
    )
    .await?;
    Ok((rows.into_iter().map(|r| r.cert).collect(), more))
}

/// One certificate as `scope` may see it (None when unknown or outside the scope: server and
/// instance certificates are outside every scope).
pub async fn get(
    store: &Store,
    scope: Option<&crate::auth::Scope>,
    serial: &str,
) -> Result<Option<CertificateRow>, StoreError> {
    let mut conn = store.conn().await?;
    let Some(cert) = rows::get(&mut conn, serial).await? else { return Ok(None) };
    if let Some(scope) = scope {
        if !super::revoke::certificate_in_scope(&mut conn, scope, &cert).await? {
            return Ok(None);
        }
    }
    Ok(Some(cert))
}
