//! `certificates`: every certificate provisiond issued, with revocation state.

use sqlx::AnyConnection;

use super::StoreError;

/// One issued certificate.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CertificateRow {
    /// serial, lowercase hex
    pub serial: String,
    /// owning device (None for server certificates)
    pub device_id: Option<String>,
    /// issuing CA id
    pub issuer_id: String,
    /// `device` | `server`
    pub profile: String,
    /// DER
    pub der: Vec<u8>,
    /// notBefore
    pub not_before: i64,
    /// notAfter
    pub not_after: i64,
    /// revocation time
    pub revoked_at: Option<i64>,
    /// revocation reason (API name)
    pub revocation_reason: Option<String>,
    /// created
    pub created_at: i64,
}

/// Records an issued certificate.
pub async fn insert(conn: &mut AnyConnection, row: &CertificateRow) -> Result<(), StoreError> {
    let mut w = super::Writes::new(super::dialect_of(conn));
    insert_many(&mut w, std::slice::from_ref(row));
    w.execute(conn).await
}

/// Adds one multi-row insert of issued certificates to `w` (nothing for none).
pub fn insert_many(w: &mut super::Writes, rows: &[CertificateRow]) {
    w.insert(
        "certificates",
        "serial, device_id, issuer_id, profile, der, not_before, not_after, revoked_at, \
         revocation_reason, created_at",
        rows.len(),
    );
    for row in rows {
        w.bind(&row.serial)
            .bind(row.device_id.as_deref())
            .bind(&row.issuer_id)
            .bind(&row.profile)
            .bind(&row.der)
            .bind(row.not_before)
            .bind(row.not_after)
            .bind(row.revoked_at)
            .bind(row.revocation_reason.as_deref())
            .bind(row.created_at);
    }
}

/// Revoked certificates of one issuer (CRL content).
pub async fn revoked_by_issuer(
    conn: &mut AnyConnection,
    issuer_id: &str,
) -> Result<Vec<CertificateRow>, StoreError> {
    Ok(sqlx::query_as::<_, CertificateRow>(
        "SELECT serial, device_id, issuer_id, profile, der, not_before, not_after, revoked_at, revocation_reason, created_at \
         FROM certificates WHERE issuer_id = $1 AND revoked_at IS NOT NULL ORDER BY serial",
    )
    .bind(issuer_id)
    .fetch_all(conn)
    .await?)
}

/// A certificate with its device's owner as stored now (none when it has no device row).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OwnedCertificateRow {
    /// the certificate
    #[sqlx(flatten)]
    pub cert: CertificateRow,
    /// its device's owner
    #[sqlx(flatten)]
    pub owner: super::devices::JoinedOwner,
}

/// A page of certificates in serial order after `after`, optionally of one device and of
/// device ids with a prefix, each with its device's owner.
pub async fn page(
    conn: &mut AnyConnection,
    device_id: Option<&str>,
    prefix: Option<&str>,
    profile: Option<&str>,
    after: &str,
    limit: i64,
) -> Result<Vec<OwnedCertificateRow>, StoreError> {
    Ok(sqlx::query_as::<_, OwnedCertificateRow>(
        "SELECT c.serial, c.device_id, c.issuer_id, c.profile, c.der, c.not_before, c.not_after, \
         c.revoked_at, c.revocation_reason, c.created_at, \
         d.owner_kind AS owner_kind, d.enrollment_group_id AS owner_group \
         FROM certificates c LEFT JOIN devices d ON d.device_id = c.device_id \
         WHERE ($1 IS NULL OR c.device_id = $1) AND c.serial > $2 \
         AND ($4 IS NULL OR substr(c.device_id, 1, length($4)) = $4) \
         AND ($5 IS NULL OR c.profile = $5) \
         ORDER BY c.serial LIMIT $3",
    )
    .bind(device_id)
    .bind(after)
    .bind(limit)
    .bind(prefix)
    .bind(profile)
    .fetch_all(conn)
    .await?)
}

/// Reads one certificate.
pub async fn get(
    conn: &mut AnyConnection,
    serial: &str,
) -> Result<Option<CertificateRow>, StoreError> {
    Ok(sqlx::query_as::<_, CertificateRow>(
        "SELECT serial, device_id, issuer_id, profile, der, not_before, not_after, revoked_at, revocation_reason, created_at \
         FROM certificates WHERE serial = $1",
    )
    .bind(serial)
    .fetch_optional(conn)
    .await?)
}

/// Revokes one certificate (if not yet revoked, or only on hold: a hold is the one revocation
/// that may still change, RFC 5280 §5.3.1) and marks its issuer's CRL stale. Returns whether
/// this call revoked it.
pub async fn revoke(
    conn: &mut AnyConnection,
    serial: &str,
    reason: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE certificates SET revoked_at = $2, revocation_reason = $3 WHERE serial = $1 \
         AND (revoked_at IS NULL \
              OR (revocation_reason = 'certificate_hold' AND $3 <> 'certificate_hold'))",
    )
    .bind(serial)
    .bind(now)
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE crls SET next_update = 0 WHERE issuer_id IN (SELECT issuer_id FROM certificates WHERE serial = $1)")
        .bind(serial)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Records that a public key is compromised (its certificate `serial` was revoked for key or
/// CA compromise): no certificate is issued for it again. Idempotent.
pub async fn mark_compromised(
    conn: &mut AnyConnection,
    key_fingerprint: &str,
    serial: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO compromised_keys (spki_sha256, serial, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (spki_sha256) DO NOTHING",
    )
    .bind(key_fingerprint)
    .bind(serial)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether a public key (by fingerprint) is compromised.
pub async fn is_compromised(
    conn: &mut AnyConnection,
    key_fingerprint: &str,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM compromised_keys WHERE spki_sha256 = $1")
        .bind(key_fingerprint)
        .fetch_one(conn)
        .await?
        > 0)
}

/// Which of `fingerprints` are compromised (one round trip).
pub async fn compromised_among(
    conn: &mut AnyConnection,
    fingerprints: &[&str],
) -> Result<std::collections::HashSet<String>, StoreError> {
    super::present(conn, "compromised_keys", "spki_sha256", fingerprints).await
}

/// Certificates revoked for key or CA compromise whose key is not marked compromised yet
/// (`(serial, der)`): the ones revoked before `compromised_keys` existed.
pub async fn compromised_unmarked(
    conn: &mut AnyConnection,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    Ok(sqlx::query_as::<_, (String, Vec<u8>)>(
        "SELECT serial, der FROM certificates \
         WHERE revocation_reason IN ('key_compromise', 'ca_compromise') \
         AND serial NOT IN (SELECT serial FROM compromised_keys)",
    )
    .fetch_all(conn)
    .await?)
}

/// Revokes every unrevoked certificate of a device and marks the affected CRLs stale, inside
/// the caller's transaction.
pub async fn revoke_all_of_device(
    tx: &mut AnyConnection,
    device_id: &str,
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE crls SET next_update = 0 WHERE issuer_id IN \
         (SELECT issuer_id FROM certificates WHERE device_id = $1 AND revoked_at IS NULL)",
    )
    .bind(device_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE certificates SET revoked_at = $2, revocation_reason = $3 \
         WHERE device_id = $1 AND revoked_at IS NULL",
    )
    .bind(device_id)
    .bind(now)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
