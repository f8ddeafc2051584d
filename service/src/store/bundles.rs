//! `bundles`: one-time provisioning bundles. Redemption is exactly-once: the winner is the one
//! transaction whose conditional UPDATE affects the row.

use sqlx::AnyConnection;

use super::StoreError;

/// One bundle.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BundleRow {
    /// id
    pub id: String,
    /// device
    pub device_id: String,
    /// x509 | sas | both
    pub credential: String,
    /// json | pem-tar | pkcs12
    pub format: String,
    /// SHA-256 of the token, hex
    pub token_sha256: String,
    /// sealed payload
    pub payload: Option<Vec<u8>>,
    /// created
    pub created_at: i64,
    /// deadline
    pub expires_at: i64,
    /// when redeemed
    pub redeemed_at: Option<i64>,
    /// from where
    pub redeemed_from: Option<String>,
    /// when cancelled
    pub cancelled_at: Option<i64>,
    /// the `generation_id` of the device it was made for (a device re-created under the same
    /// id has another one)
    pub device_generation: Option<String>,
}

/// Inserts a bundle.
pub async fn insert(conn: &mut AnyConnection, b: &BundleRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO bundles (id, device_id, credential, format, token_sha256, payload, created_at, \
         expires_at, device_generation) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&b.id)
    .bind(&b.device_id)
    .bind(&b.credential)
    .bind(&b.format)
    .bind(&b.token_sha256)
    .bind(b.payload.as_deref())
    .bind(b.created_at)
    .bind(b.expires_at)
    .bind(b.device_generation.as_deref())
    .execute(conn)
    .await?;
    Ok(())
}

/// Reads a bundle.
pub async fn get(conn: &mut AnyConnection, id: &str) -> Result<Option<BundleRow>, StoreError> {
    Ok(sqlx::query_as::<_, BundleRow>(
        "SELECT id, device_id, credential, format, token_sha256, payload, created_at, expires_at, redeemed_at, \
         redeemed_from, cancelled_at, device_generation FROM bundles WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// Marks a pending, unexpired bundle redeemed and erases its payload. True for exactly one
/// caller.
pub async fn mark_redeemed(
    conn: &mut AnyConnection,
    id: &str,
    now: i64,
    from: &str,
) -> Result<bool, StoreError> {
    Ok(sqlx::query(
        "UPDATE bundles SET redeemed_at = $2, redeemed_from = $3, payload = NULL \
         WHERE id = $1 AND redeemed_at IS NULL AND cancelled_at IS NULL AND expires_at > $2",
    )
    .bind(id)
    .bind(now)
    .bind(from)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Cancels a pending bundle and erases its payload.
pub async fn cancel(conn: &mut AnyConnection, id: &str, now: i64) -> Result<bool, StoreError> {
    Ok(sqlx::query(
        "UPDATE bundles SET cancelled_at = $2, payload = NULL \
         WHERE id = $1 AND redeemed_at IS NULL AND cancelled_at IS NULL AND expires_at > $2",
    )
    .bind(id)
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Cancels every pending bundle of a device (it is being deleted) and erases their payloads.
pub async fn cancel_for_device(
    conn: &mut AnyConnection,
    device_id: &str,
    now: i64,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE bundles SET cancelled_at = $2, payload = NULL \
         WHERE device_id = $1 AND redeemed_at IS NULL AND cancelled_at IS NULL AND expires_at > $2",
    )
    .bind(device_id)
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Erases the payloads of expired bundles; returns how many.
pub async fn sweep_expired(conn: &mut AnyConnection, now: i64) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE bundles SET payload = NULL WHERE expires_at <= $1 AND payload IS NOT NULL",
    )
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected())
}

/// A bundle with its device's owner as stored now (none when the device is gone).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OwnedBundleRow {
    /// the bundle
    #[sqlx(flatten)]
    pub bundle: BundleRow,
    /// its device's owner
    #[sqlx(flatten)]
    pub owner: super::devices::JoinedOwner,
}

/// One page of bundles in id order after `after`, optionally of one device, each with its
/// device's owner.
pub async fn page(
    conn: &mut AnyConnection,
    device_id: Option<&str>,
    after: &str,
    limit: i64,
) -> Result<Vec<OwnedBundleRow>, StoreError> {
    Ok(sqlx::query_as::<_, OwnedBundleRow>(
        "SELECT b.id, b.device_id, b.credential, b.format, b.token_sha256, b.payload, \
         b.created_at, b.expires_at, b.redeemed_at, b.redeemed_from, b.cancelled_at, \
         b.device_generation, d.owner_kind AS owner_kind, d.enrollment_group_id AS owner_group \
         FROM bundles b LEFT JOIN devices d ON d.device_id = b.device_id \
         WHERE ($1 IS NULL OR b.device_id = $1) AND b.id > $2 ORDER BY b.id LIMIT $3",
    )
    .bind(device_id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}
