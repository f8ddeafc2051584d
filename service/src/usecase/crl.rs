//! CRLs: one per intermediate, cached in `crls`, regenerated when older than half its lifetime
//! (or when a revocation marks it stale). The CRL number only grows: a new CRL is stored with a
//! compare-and-swap on the previous number, so concurrent instances never publish two CRLs
//! with the same number.

use ca::revocation::{build_crl, RevocationReason, RevokedEntry};

use crate::authority::CaEntry;
use crate::store::crls::{self, CrlRow};
use crate::store::{certificates, Store, StoreError};

/// Why a CRL could not be produced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrlError {
    /// The issuer has no signing key here (the root is offline).
    #[error("no CRL is published for this issuer")]
    NoKey,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing failed.
    #[error(transparent)]
    Revocation(#[from] ca::revocation::RevocationError),
}

impl From<ca::SignError> for CrlError {
    fn from(e: ca::SignError) -> Self {
        CrlError::Revocation(e.into())
    }
}

/// The current DER CRL of `entry`, regenerating it when due.
pub async fn current(
    store: &Store,
    entry: &std::sync::Arc<CaEntry>,
    now: i64,
    validity_secs: i64,
) -> Result<Vec<u8>, CrlError> {
    if entry.issuer.is_none() {
        return Err(CrlError::NoKey);
    }
    let mut conn = store.conn().await?;
    let cached = crls::get(&mut conn, &entry.id).await?;
    if let Some(row) = &cached {
        let half_life = (row.next_update - row.this_update) / 2;
        if row.next_update > now && now - row.this_update < half_life.max(1) {
            return Ok(row.der.clone());
        }
    }
    let revoked = certificates::revoked_by_issuer(&mut conn, &entry.id).await?;
    drop(conn);
    let entries: Vec<RevokedEntry> = revoked
        .iter()
        .map(|c| RevokedEntry {
            serial: c.serial.clone(),
            revoked_at: c.revoked_at.unwrap_or(now),
            reason: c
                .revocation_reason
                .as_deref()
                .and_then(RevocationReason::parse)
                .unwrap_or_default(),
        })
        .collect();
    let previous = cached.as_ref().map_or(0, |r| r.number);
    let number = previous + 1;
    let der = crate::signing::on_signer(entry.clone(), move |issuer| {
        build_crl(issuer, number as u64, now, now + validity_secs, &entries).map_err(CrlError::from)
    })
    .await?;
    let crl = CrlRow { number, this_update: now, next_update: now + validity_secs, der };
    let mut tx = store.begin().await?;
    let previous = cached.map(|r| r.number);
    if crls::publish(&mut tx, &entry.id, previous, &crl).await? {
        tx.commit().await.map_err(StoreError::from)?;
        return Ok(crl.der);
    }
    // Another instance published first: serve theirs (same content, its number).
    let winner = crls::get(&mut tx, &entry.id).await?.map(|r| r.der);
    tx.commit().await.map_err(StoreError::from)?;
    Ok(winner.unwrap_or(crl.der))
}
