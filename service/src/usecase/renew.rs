//! Certificate renewal by a device that proves possession of its current certificate (mTLS),
//! used by `POST /v1/devices/{id}/certificates/renew` and EST `simplereenroll`.

use ca::csr::{CsrPolicy, VerifiedCsr};
use ca::CsrError;

use super::certificates::{record, Issued};
use super::Ctx;
use crate::authority::Authority;
use crate::mtls::ClientIdentity;
use crate::store::{certificates, devices, Store, StoreError};

/// Why a renewal was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenewError {
    /// the presented certificate is unknown, revoked, or the device is gone / disabled
    #[error("{0}")]
    Unauthorized(&'static str),
    /// the certificate belongs to another device
    #[error("the client certificate belongs to another device")]
    OtherDevice,
    /// the new key's certificate was revoked for compromise
    #[error("the certificate of this key was revoked for compromise: send a CSR for a new key")]
    KeyCompromised,
    /// CSR rule
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// signing
    #[error(transparent)]
    Issue(#[from] ca::IssueError),
    /// storage
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A renewal request.
pub struct RenewRequest<'a> {
    /// the device renewing
    pub device_id: &'a str,
    /// its validated client certificate
    pub presented: &'a ClientIdentity,
    /// the new CSR (PEM or DER)
    pub csr: &'a [u8],
    /// revoke the presented certificate once the new one is issued
    pub revoke_previous: bool,
}

/// Issues a new certificate for `device_id` to the holder of `presented`.
pub async fn renew(
    store: &Store,
    cx: &Ctx<'_>,
    authority: &Authority,
    base_url: &str,
    req: RenewRequest<'_>,
) -> Result<Issued, RenewError> {
    let RenewRequest { device_id, presented, csr, revoke_previous } = req;
    let mut tx = store.begin().await?;
    let current = certificates::get(&mut tx, &presented.serial)
        .await?
        .ok_or(RenewError::Unauthorized("the client certificate is not one provisiond issued"))?;
    if current.device_id.as_deref() != Some(device_id) {
        return Err(RenewError::OtherDevice);
    }
    if current.revoked_at.is_some() {
        return Err(RenewError::Unauthorized("the client certificate is revoked"));
    }
    let device = devices::get(&mut tx, device_id)
        .await?
        .ok_or(RenewError::Unauthorized("the device no longer exists"))?;
    if device.status != "enabled" {
        return Err(RenewError::Unauthorized("the device is disabled"));
    }
    let verified = VerifiedCsr::parse(csr, &CsrPolicy::device(device_id))?;
    if certificates::is_compromised(&mut tx, &verified.subject_key().fingerprint()).await? {
        return Err(RenewError::KeyCompromised);
    }
    let issuer = authority.active();
    let key = verified.subject_key();
    let cert = crate::signing::issue_device(authority, key, (device_id, base_url), cx.now).await?;
    certificates::insert(&mut tx, &record(&cert, Some(device_id), &issuer.id(), "device", cx.now))
        .await?;
    if revoke_previous {
        certificates::revoke(&mut tx, &current.serial, "superseded", cx.now).await?;
    }
    cx.audit(
        &mut tx,
        store.dialect(),
        "certificate.renew",
        &format!("{device_id}/{}", cert.serial),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    let chain_pem = format!("{}{}", cert.pem(), issuer.cert_pem());
    Ok(Issued { cert, chain_pem })
}
