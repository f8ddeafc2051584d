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

/// A page of certificates in serial order after `after`, optionally of one device.
pub async fn page(
    conn: &mut AnyConnection,
    device_id: Option<&str>,
    after: &str,
    limit: i64,
) -> Result<Vec<CertificateRow>, StoreError> {
    Ok(sqlx::query_as::<_, CertificateRow>(
        "SELECT serial, device_id, issuer_id, profile, der, not_before, not_after, revoked_at, revocation_reason, created_at \
         FROM certificates WHERE ($1 IS NULL OR device_id = $1) AND serial > $2 ORDER BY serial LIMIT $3",
    )
    .bind(device_id)
    .bind(after)
    .bind(limit)
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

/// Revokes one certificate (if not yet revoked) and marks its issuer's CRL stale. Returns
/// whether this call revoked it.
pub async fn revoke(
    conn: &mut AnyConnection,
    serial: &str,
    reason: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE certificates SET revoked_at = $2, revocation_reason = $3 WHERE serial = $1 AND revoked_at IS NULL",
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
