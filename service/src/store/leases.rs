//! `leases`: one holder at a time for periodic jobs, claimed with one conditional statement
//! (no advisory locks, same SQL on both engines).

use sqlx::AnyConnection;

use super::StoreError;

/// Claims or renews `name` for `holder` until `now + ttl`. True when `holder` now holds it.
pub async fn try_claim(
    conn: &mut AnyConnection,
    name: &str,
    holder: &str,
    now: i64,
    ttl_secs: i64,
) -> Result<bool, StoreError> {
    // Make sure the row exists; losing this race is fine.
    sqlx::query(
        "INSERT INTO leases (name, holder, expires_at) VALUES ($1, '', 0) ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .execute(&mut *conn)
    .await?;
    let claimed = sqlx::query(
        "UPDATE leases SET holder = $2, expires_at = $4 WHERE name = $1 AND (holder = $2 OR expires_at < $3)",
    )
    .bind(name)
    .bind(holder)
    .bind(now)
    .bind(now + ttl_secs)
    .execute(conn)
    .await?;
    Ok(claimed.rows_affected() == 1)
}
