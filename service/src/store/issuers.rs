//! `issuers`: CA certificates and their sealed keys.

use sqlx::AnyConnection;

use super::StoreError;

/// One CA certificate.
#[derive(Debug, sqlx::FromRow)]
pub struct IssuerRow {
    /// lowercase hex SKI
    pub id: String,
    /// certificate DER
    pub cert_der: Vec<u8>,
    /// 1 for the root
    pub is_root: i64,
    /// 1 for the intermediate that issues now
    pub active: i64,
    /// master key version of `private_key`
    pub key_version: Option<i64>,
    /// sealed PKCS#8 (absent for the root and for keys in a PKCS#11 token)
    pub private_key: Option<Vec<u8>>,
    /// PKCS#11 label of the key when it lives in a token
    pub key_label: Option<String>,
    /// notAfter
    pub not_after: i64,
    /// creation time
    pub created_at: i64,
}

/// Inserts an issuer.
pub async fn insert(conn: &mut AnyConnection, row: &IssuerRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO issuers (id, cert_der, is_root, active, key_version, private_key, key_label, \
         not_after, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&row.id)
    .bind(&row.cert_der)
    .bind(row.is_root)
    .bind(row.active)
    .bind(row.key_version)
    .bind(row.private_key.as_deref())
    .bind(row.key_label.as_deref())
    .bind(row.not_after)
    .bind(row.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Every issuer, newest first.
pub async fn list(conn: &mut AnyConnection) -> Result<Vec<IssuerRow>, StoreError> {
    Ok(sqlx::query_as::<_, IssuerRow>(
        "SELECT id, cert_der, is_root, active, key_version, private_key, key_label, not_after, \
         created_at \
         FROM issuers ORDER BY created_at DESC, id",
    )
    .fetch_all(conn)
    .await?)
}

/// Each issuer's current CRL: `(issuer_id, number, next_update)`.
pub async fn crl_states(conn: &mut AnyConnection) -> Result<Vec<(String, i64, i64)>, StoreError> {
    Ok(sqlx::query_as::<_, (String, i64, i64)>(
        "SELECT issuer_id, number, next_update FROM crls ORDER BY issuer_id",
    )
    .fetch_all(conn)
    .await?)
}

/// Marks every issuer inactive (before the new intermediate is inserted active, in the same
/// transaction).
pub async fn deactivate_all(tx: &mut AnyConnection) -> Result<(), StoreError> {
    sqlx::query("UPDATE issuers SET active = 0 WHERE active = 1").execute(tx).await?;
    Ok(())
}
