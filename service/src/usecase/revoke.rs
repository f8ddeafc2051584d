//! Revocation and OCSP answers.

use ca::revocation::{
    ocsp_response, ocsp_unauthorized, CertState, ParsedOcspRequest, RevocationReason,
};

use super::Ctx;
use crate::auth::Scope;
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
    /// the CA key could not sign (token unreachable, key missing)
    #[error(transparent)]
    Sign(#[from] ca::SignError),
}

/// Revokes a certificate (idempotent: an already revoked certificate keeps its first
/// revocation) and returns its row. A scoped caller reaches only device certificates of
/// devices in its scope (checked on the rows this transaction read); server and instance
/// certificates are not found for it. A revocation for key or CA compromise also marks the
/// public key compromised: it is never certified again.
pub async fn revoke(
    store: &Store,
    cx: &Ctx<'_>,
    scope: Option<&Scope>,
    serial: &str,
    reason: RevocationReason,
) -> Result<CertificateRow, RevokeError> {
    let mut tx = store.begin().await?;
    let Some(cert) = rows::get(&mut tx, serial).await? else {
        return Err(RevokeError::NotFound);
    };
    if let Some(scope) = scope {
        if !certificate_in_scope(&mut tx, scope, &cert).await? {
            return Err(RevokeError::NotFound);
        }
    }
    if rows::revoke(&mut tx, serial, reason.as_str(), cx.now).await? {
        cx.audit(&mut tx, store.dialect(), "certificate.revoke", serial).await?;
    }
    if matches!(reason, RevocationReason::KeyCompromise | RevocationReason::CaCompromise) {
        if let Some(fp) = ca::csr::certificate_key_fingerprint(&cert.der) {
            rows::mark_compromised(&mut tx, &fp, serial, cx.now).await?;
        }
    }
    let row = rows::get(&mut tx, serial).await?.ok_or(RevokeError::NotFound)?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(row)
}

/// Marks the key of every certificate revoked for key or CA compromise that is not marked yet
/// (those revoked before the registry kept compromised keys); returns how many. Runs at
/// start-up, once per database, in one transaction.
pub async fn mark_compromised_keys(store: &Store, now: i64) -> Result<usize, StoreError> {
    // Once per database: revocations since mark their keys as they happen, and the scan reads
    // every certificate (no index on the reason), too much for every start of a large registry.
    const DONE: &str = "compromised_keys_backfilled";
    let mut tx = store.begin().await?;
    if crate::store::meta::get(&mut tx, DONE).await?.is_some() {
        return Ok(0);
    }
    let rows = rows::compromised_unmarked(&mut tx).await?;
    let mut marked = 0;
    for (serial, der) in &rows {
        if let Some(fp) = ca::csr::certificate_key_fingerprint(der) {
            rows::mark_compromised(&mut tx, &fp, serial, now).await?;
            marked += 1;
        }
    }
    crate::store::meta::insert(&mut tx, DONE, &now.to_string()).await?;
    tx.commit().await?;
    Ok(marked)
}

/// Whether a certificate is inside a scope: a device certificate whose device (as stored now;
/// a deleted device has no owner) the scope covers. Server and instance certificates never are.
pub async fn certificate_in_scope(
    conn: &mut crate::store::Conn,
    scope: &Scope,
    cert: &CertificateRow,
) -> Result<bool, StoreError> {
    let Some(device_id) = cert.device_id.as_deref().filter(|_| cert.profile == "device") else {
        return Ok(false);
    };
    super::devices::in_scope(conn, scope, device_id).await
}

/// Answers a DER OCSP request: signed by the CA that issued the queried certificates.
pub async fn ocsp(
    store: &Store,
    authority: &Authority,
    request: &ParsedOcspRequest,
    now: i64,
) -> Result<Vec<u8>, RevokeError> {
    let Some(first) = request.queries().first() else {
        return Ok(ca::revocation::ocsp_malformed());
    };
    let Some(entry) = authority
        .entries()
        .iter()
        .find(|e| e.issuer.as_ref().is_some_and(|i| first.is_issued_by(i)))
    else {
        return Ok(ocsp_unauthorized());
    };
    let Some(signer) = entry.issuer.as_ref() else {
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
    drop(conn);
    let request = request.clone();
    crate::signing::on_signer(entry.clone(), move |signer| {
        match ocsp_response(signer, &request, &states, now, now + OCSP_VALIDITY_SECS) {
            Ok(der) => Ok(der),
            // A token that cannot sign now is a 503, not an OCSP internalError.
            Err(ca::revocation::RevocationError::Sign(e @ ca::SignError::Unavailable(_))) => {
                Err(RevokeError::Sign(e))
            }
            Err(e) => {
                tracing::error!(error = %e, "OCSP signing failed");
                Ok(x509_internal_error())
            }
        }
    })
    .await
}

fn x509_internal_error() -> Vec<u8> {
    // OCSPResponse { responseStatus internalError(2) }
    vec![0x30, 0x03, 0x0a, 0x01, 0x02]
}
