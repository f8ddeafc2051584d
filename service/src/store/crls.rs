//! `crls`: each intermediate's current CRL. A new CRL replaces the stored one only by a
//! compare-and-swap on the previous number, so concurrent instances never publish two CRLs with
//! the same number.

use sqlx::AnyConnection;

use super::StoreError;

/// The stored CRL of an issuer.
#[derive(Debug, sqlx::FromRow)]
pub struct CrlRow {
    /// CRL number
    pub number: i64,
    /// thisUpdate, unix seconds
    pub this_update: i64,
    /// nextUpdate, unix seconds (0: marked stale by a revocation)
    pub next_update: i64,
    /// DER
    pub der: Vec<u8>,
}

/// The stored CRL of `issuer_id`.
pub async fn get(conn: &mut AnyConnection, issuer_id: &str) -> Result<Option<CrlRow>, StoreError> {
    Ok(sqlx::query_as::<_, CrlRow>(
        "SELECT number, this_update, next_update, der FROM crls WHERE issuer_id = $1",
    )
    .bind(issuer_id)
    .fetch_optional(conn)
    .await?)
}

/// Stores `crl` for `issuer_id` if the stored CRL is still number `previous` (`None`: no CRL
/// stored yet). False when another instance published first.
pub async fn publish(
    tx: &mut AnyConnection,
    issuer_id: &str,
    previous: Option<i64>,
    crl: &CrlRow,
) -> Result<bool, StoreError> {
    let query = match previous {
        None => sqlx::query(
            "INSERT INTO crls (issuer_id, number, this_update, next_update, der) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (issuer_id) DO NOTHING",
        ),
        Some(_) => sqlx::query(
            "UPDATE crls SET number = $2, this_update = $3, next_update = $4, der = $5 \
             WHERE issuer_id = $1 AND number = $6",
        ),
    };
    let mut query = query
        .bind(issuer_id)
        .bind(crl.number)
        .bind(crl.this_update)
        .bind(crl.next_update)
        .bind(&crl.der);
    if let Some(previous) = previous {
        query = query.bind(previous);
    }
    Ok(query.execute(tx).await?.rows_affected() == 1)
}
