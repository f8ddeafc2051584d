//! `policies`: shared access policies with sealed keys.

use sqlx::AnyConnection;

use super::StoreError;

/// One policy row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PolicyRow {
    /// name
    pub name: String,
    /// JSON array of permission names
    pub permissions: String,
    /// JSON scope object
    pub scope: Option<String>,
    /// master key version of the keys
    pub key_version: i64,
    /// sealed primary key
    pub primary_key: Vec<u8>,
    /// sealed secondary key
    pub secondary_key: Vec<u8>,
    /// created
    pub created_at: i64,
    /// updated
    pub updated_at: i64,
}

/// Inserts a policy.
pub async fn insert(conn: &mut AnyConnection, row: &PolicyRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO policies (name, permissions, scope, key_version, primary_key, secondary_key, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&row.name)
    .bind(&row.permissions)
    .bind(row.scope.as_deref())
    .bind(row.key_version)
    .bind(&row.primary_key)
    .bind(&row.secondary_key)
    .bind(row.created_at)
    .bind(row.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Reads a policy by name.
pub async fn get(conn: &mut AnyConnection, name: &str) -> Result<Option<PolicyRow>, StoreError> {
    Ok(sqlx::query_as::<_, PolicyRow>(
        "SELECT name, permissions, scope, key_version, primary_key, secondary_key, created_at, updated_at \
         FROM policies WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(conn)
    .await?)
}

/// Replaces a policy's mutable columns.
pub async fn update(conn: &mut AnyConnection, row: &PolicyRow) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE policies SET permissions = $2, scope = $3, key_version = $4, primary_key = $5, \
         secondary_key = $6, updated_at = $7 WHERE name = $1",
    )
    .bind(&row.name)
    .bind(&row.permissions)
    .bind(row.scope.as_deref())
    .bind(row.key_version)
    .bind(&row.primary_key)
    .bind(&row.secondary_key)
    .bind(row.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes a policy; false when it did not exist.
pub async fn delete(conn: &mut AnyConnection, name: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query("DELETE FROM policies WHERE name = $1")
        .bind(name)
        .execute(conn)
        .await?
        .rows_affected()
        == 1)
}

/// One page of policies in name order (byte order) after `after`.
pub async fn page(
    conn: &mut AnyConnection,
    after: &str,
    limit: i64,
) -> Result<Vec<PolicyRow>, StoreError> {
    Ok(sqlx::query_as::<_, PolicyRow>(
        "SELECT name, permissions, scope, key_version, primary_key, secondary_key, created_at, \
         updated_at FROM policies WHERE name > $1 ORDER BY name LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}
