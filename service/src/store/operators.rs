//! `operators`: human administrators (argon2id password hashes, never passwords).

use sqlx::AnyConnection;

use super::StoreError;

/// One operator.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OperatorRow {
    /// user name
    pub name: String,
    /// argon2id PHC string
    pub password_hash: String,
    /// JSON array of permission names
    pub permissions: String,
    /// created
    pub created_at: i64,
    /// updated
    pub updated_at: i64,
}

/// Reads an operator.
pub async fn get(conn: &mut AnyConnection, name: &str) -> Result<Option<OperatorRow>, StoreError> {
    Ok(sqlx::query_as::<_, OperatorRow>(
        "SELECT name, password_hash, permissions, created_at, updated_at FROM operators WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(conn)
    .await?)
}

/// Inserts or replaces an operator; true when it was created.
pub async fn upsert(conn: &mut AnyConnection, row: &OperatorRow) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE operators SET password_hash = $2, permissions = $3, updated_at = $4 WHERE name = $1",
    )
    .bind(&row.name)
    .bind(&row.password_hash)
    .bind(&row.permissions)
    .bind(row.updated_at)
    .execute(&mut *conn)
    .await?;
    if updated.rows_affected() == 1 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO operators (name, password_hash, permissions, created_at, updated_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&row.name)
    .bind(&row.password_hash)
    .bind(&row.permissions)
    .bind(row.created_at)
    .bind(row.updated_at)
    .execute(conn)
    .await?;
    Ok(true)
}

/// Deletes an operator; false when unknown.
pub async fn delete(conn: &mut AnyConnection, name: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query("DELETE FROM operators WHERE name = $1")
        .bind(name)
        .execute(conn)
        .await?
        .rows_affected()
        == 1)
}
