//! `meta` (plain key/value facts) and `secrets` (sealed singletons).

use sqlx::AnyConnection;

use super::StoreError;

/// Inserts a meta row; fails with `Conflict` when the key exists (used as the init marker).
pub async fn insert(conn: &mut AnyConnection, key: &str, value: &str) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2)")
        .bind(key)
        .bind(value)
        .execute(conn)
        .await?;
    Ok(())
}

/// Reads a meta value.
pub async fn get(conn: &mut AnyConnection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar::<_, String>("SELECT value FROM meta WHERE key = $1")
        .bind(key)
        .fetch_optional(conn)
        .await?)
}

/// A sealed singleton row.
#[derive(Debug, sqlx::FromRow)]
pub struct SecretRow {
    /// name (row id in the seal context)
    pub name: String,
    /// master key version
    pub key_version: i64,
    /// sealed value
    pub value: Vec<u8>,
}

/// Inserts a sealed singleton.
pub async fn insert_secret(
    conn: &mut AnyConnection,
    name: &str,
    key_version: u32,
    sealed: &[u8],
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO secrets (name, key_version, value, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(name)
    .bind(i64::from(key_version))
    .bind(sealed)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Reads a sealed singleton.
pub async fn secret(conn: &mut AnyConnection, name: &str) -> Result<SecretRow, StoreError> {
    Ok(sqlx::query_as::<_, SecretRow>(
        "SELECT name, key_version, value FROM secrets WHERE name = $1",
    )
    .bind(name)
    .fetch_one(conn)
    .await?)
}
