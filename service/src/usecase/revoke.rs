//! Revocation and OCSP answers.

use ca::revocation::{
    ocsp_response, ocsp_unauthorized, CertState, ParsedOcspRequest, RevocationReason,
};

use super::Ctx;
use crate::authority::Authority;
use crate::store::certificates::{self as rows, CertificateRow};
use crate::store::{Store, StoreError};

/// How long an OCSP answer may be cached by relying parties.
pub const OCSP_VALIDITY_SECS: i64 = 3600;

/// Why a revocation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevokeError {
    /// unknown serial
    #[error("certificate not found")]
    NotFound,
    /// storage
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Revokes a certificate (idempotent: an already revoked certificate keeps its first
/// revocation) and returns its row.
pub async fn revoke(
    store: &Store,
    cx: &Ctx<'_>,
    serial: &str,
    reason: RevocationReason,
) -> Result<CertificateRow, RevokeError> {
    let mut tx = store.begin().await?;
    if rows::get(&mut tx, serial).await?.is_none() {
        return Err(RevokeError::NotFound);
    }
    if rows::revoke(&mut tx, serial, reason.as_str(), cx.now).await? {
        cx.audit(&mut tx, store.dialect(), "certificate.revoke", serial).await?;
    }
    let row = rows::get(&mut tx, serial).await?.ok_or(RevokeError::NotFound)?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(row)
}

/// Answers a DER OCSP request: signed by the CA that issued the queried certificates.
pub async fn ocsp(
    store: &Store,
    authority: &Authority,
    request: &ParsedOcspRequest,
    now: i64,
) -> Result<Vec<u8>, StoreError> {
    let Some(first) = request.queries().first() else {
        return Ok(ca::revocation::ocsp_malformed());
    };
    let Some(signer) = authority
        .entries()
        .iter()
        .filter_map(|e| e.issuer.as_ref())
        .find(|i| first.is_issued_by(i))
    else {
        return Ok(ocsp_unauthorized());
    };
    let signer_id = signer.id();
    let mut conn = store.conn().await?;
    let mut states = Vec::with_capacity(request.queries().len());
    for q in request.queries() {
        let state = if !q.is_issued_by(signer) {
            CertState::Unknown
        } else {
            match rows::get(&mut conn, q.serial()).await? {
                Some(row) if row.issuer_id == signer_id => match row.revoked_at {
                    Some(at) => CertState::Revoked {
                        at,
                        reason: row
                            .revocation_reason
                            .as_deref()
                            .and_then(RevocationReason::parse)
                            .unwrap_or_default(),
                    },
                    None => CertState::Good,
                },
                _ => CertState::Unknown,
            }
        };
        states.push(state);
    }
    Ok(ocsp_response(signer, request, &states, now, now + OCSP_VALIDITY_SECS).unwrap_or_else(|e| {
        tracing::error!(error = %e, "OCSP signing failed");
        x509_internal_error()
    }))
}

fn x509_internal_error() -> Vec<u8> {
    // OCSPResponse { responseStatus internalError(2) }
    vec![0x30, 0x03, 0x0a, 0x01, 0x02]
}
