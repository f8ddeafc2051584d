//! Certificates for devices: admin-side issuance from a CSR, and listing.

use ca::csr::{CsrPolicy, VerifiedCsr};
use ca::issue::{issue_device, DeviceProfile, RevocationUrls};
use ca::{CsrError, IssuedCertificate};

use super::Ctx;
use crate::authority::Authority;
use crate::store::certificates::{self as rows, CertificateRow};
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
    /// unknown device
    #[error("device not found")]
    DeviceNotFound,
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
    device_id: &str,
    csr: &[u8],
) -> Result<Issued, CertificateError> {
    let verified = VerifiedCsr::parse(csr, &CsrPolicy::device(device_id))?;
    let mut tx = store.begin().await?;
    if !crate::store::devices::exists(&mut tx, device_id).await? {
        return Err(CertificateError::DeviceNotFound);
    }
    let issuer = authority.active();
    let urls = RevocationUrls { base_url: Some(base_url.to_owned()) };
    let profile = DeviceProfile { device_id, validity_secs: DEFAULT_VALIDITY_SECS, urls: &urls };
    let cert = issue_device(issuer, &verified, &profile, cx.now)?;
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
