//! AWS IoT fleet provisioning rows: certificate ownership tokens and the hold on the
//! certificates they belong to (API.md A26, A30).
//!
//! A certificate from `CreateCertificateFromCsr` / `CreateKeysAndCertificate` is recorded with
//! no device and revoked `certificate_hold` (so CRL and OCSP refuse it) until RegisterThing
//! consumes its ownership token and binds it to the registered device, lifting the hold. Every
//! step that must happen once is one conditional statement: consuming a token
//! ([`consume_token`]), lifting a hold ([`lift_hold`]), expiring holds ([`expire_holds`]).

use sqlx::AnyConnection;

use super::StoreError;

/// One ownership token (its hash; the token itself is never stored).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OwnershipTokenRow {
    /// lowercase hex SHA-256 of the token
    pub token_sha256: String,
    /// the held certificate it belongs to
    pub serial: String,
    /// the `aws_claim` group of the connection that asked
    pub group_id: String,
    /// the MQTT connection that asked (random per connection)
    pub connection_id: String,
    /// issued
    pub created_at: i64,
    /// valid until (exclusive)
    pub expires_at: i64,
    /// consumed by RegisterThing
    pub used_at: Option<i64>,
    /// the registration id it registered
    pub used_for: Option<String>,
}

/// Records a new token.
pub async fn insert_token(
    conn: &mut AnyConnection,
    t: &OwnershipTokenRow,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO aws_ownership_tokens (token_sha256, serial, group_id, connection_id, \
         created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&t.token_sha256)
    .bind(&t.serial)
    .bind(&t.group_id)
    .bind(&t.connection_id)
    .bind(t.created_at)
    .bind(t.expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Reads a token by its hash.
pub async fn token(
    conn: &mut AnyConnection,
    token_sha256: &str,
) -> Result<Option<OwnershipTokenRow>, StoreError> {
    Ok(sqlx::query_as::<_, OwnershipTokenRow>(
        "SELECT token_sha256, serial, group_id, connection_id, created_at, expires_at, used_at, \
         used_for FROM aws_ownership_tokens WHERE token_sha256 = $1",
    )
    .bind(token_sha256)
    .fetch_optional(conn)
    .await?)
}

/// Unused, unexpired tokens of a group (what a claim certificate can make the server hold).
pub async fn pending_in_group(
    conn: &mut AnyConnection,
    group_id: &str,
    now: i64,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM aws_ownership_tokens \
         WHERE group_id = $1 AND used_at IS NULL AND expires_at > $2",
    )
    .bind(group_id)
    .bind(now)
    .fetch_one(conn)
    .await?)
}

/// Consumes a token for `registration_id`: one conditional UPDATE, so exactly one caller wins
/// on any instance, and only with the group, connection and certificate it was issued for,
/// before it expires. True when this call consumed it.
pub async fn consume_token(
    conn: &mut AnyConnection,
    t: &OwnershipTokenRow,
    registration_id: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE aws_ownership_tokens SET used_at = $1, used_for = $2 \
         WHERE token_sha256 = $3 AND group_id = $4 AND connection_id = $5 AND serial = $6 \
         AND used_at IS NULL AND expires_at > $1",
    )
    .bind(now)
    .bind(registration_id)
    .bind(&t.token_sha256)
    .bind(&t.group_id)
    .bind(&t.connection_id)
    .bind(&t.serial)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Binds a held certificate to `device_id` and lifts its hold (it becomes valid), if it is
/// still held and bound to no device; marks its issuer's CRL stale. True when this call did.
pub async fn lift_hold(
    conn: &mut AnyConnection,
    serial: &str,
    device_id: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE certificates SET device_id = $1, revoked_at = NULL, revocation_reason = NULL \
         WHERE serial = $2 AND device_id IS NULL AND revocation_reason = 'certificate_hold'",
    )
    .bind(device_id)
    .bind(serial)
    .execute(&mut *conn)
    .await?;
    mark_crl_stale(conn, serial).await?;
    Ok(done.rows_affected() == 1)
}

/// Marks the CRL of the issuer of `serial` for regeneration.
pub async fn mark_crl_stale(conn: &mut AnyConnection, serial: &str) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE crls SET next_update = 0 \
         WHERE issuer_id IN (SELECT issuer_id FROM certificates WHERE serial = $1)",
    )
    .bind(serial)
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether any token row has expired (the sweep's cheap first look, outside a transaction).
pub async fn any_expired(conn: &mut AnyConnection, now: i64) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM (SELECT 1 FROM aws_ownership_tokens WHERE expires_at <= $1 LIMIT 1) e",
    )
    .bind(now)
    .fetch_one(conn)
    .await?
        > 0)
}

/// The sweep: every certificate still held whose token expired unused becomes revoked for
/// `cessation_of_operation` (its CRL is marked stale), then expired token rows are deleted.
/// Returns the serials whose hold expired.
pub async fn expire_holds(conn: &mut AnyConnection, now: i64) -> Result<Vec<String>, StoreError> {
    let serials = sqlx::query_scalar::<_, String>(
        "SELECT t.serial FROM aws_ownership_tokens t JOIN certificates c ON c.serial = t.serial \
         WHERE t.used_at IS NULL AND t.expires_at <= $1 AND c.device_id IS NULL \
         AND c.revocation_reason = 'certificate_hold' ORDER BY t.serial",
    )
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let mut expired = Vec::with_capacity(serials.len());
    for serial in serials {
        let done = sqlx::query(
            "UPDATE certificates SET revocation_reason = 'cessation_of_operation' \
             WHERE serial = $1 AND device_id IS NULL AND revocation_reason = 'certificate_hold'",
        )
        .bind(&serial)
        .execute(&mut *conn)
        .await?;
        if done.rows_affected() == 1 {
            mark_crl_stale(conn, &serial).await?;
            expired.push(serial);
        }
    }
    sqlx::query("DELETE FROM aws_ownership_tokens WHERE expires_at <= $1")
        .bind(now)
        .execute(conn)
        .await?;
    Ok(expired)
}
