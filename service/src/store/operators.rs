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
    /// random, new on every change of password or permissions and on re-creation: sessions
    /// carry the generation they were issued under and end when it changes
    pub generation: String,
}

/// `SELECT` of one operator by name.
const SELECT_ONE: &str = "SELECT name, password_hash, permissions, created_at, updated_at, \
     generation FROM operators WHERE name = $1";

impl OperatorRow {
    /// Decodes a row of `SELECT_ONE` read by [`super::direct`].
    fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            name: r.get(0)?,
            password_hash: r.get(1)?,
            permissions: r.get(2)?,
            created_at: r.get(3)?,
            updated_at: r.get(4)?,
            generation: r.get(5)?,
        })
    }
}

/// Reads an operator.
pub async fn get(conn: &mut AnyConnection, name: &str) -> Result<Option<OperatorRow>, StoreError> {
    Ok(sqlx::query_as::<_, OperatorRow>(SELECT_ONE).bind(name).fetch_optional(conn).await?)
}

/// Reads one committed operator outside any transaction: on SQLite on the calling thread, no
/// pool hop (every operator request checks its session this way), a pooled connection
/// otherwise. A read, not a cache: a change by any process is seen at once.
pub async fn lookup(store: &super::Store, name: &str) -> Result<Option<OperatorRow>, StoreError> {
    match store.direct().and_then(|d| d.row(SELECT_ONE, [name], OperatorRow::from_sqlite)) {
        Some(found) => Ok(found),
        None => get(&mut *store.conn().await?, name).await,
    }
}

/// Inserts `row` unless an operator of that name exists (one conditional statement); true when
/// inserted.
pub async fn insert_new(conn: &mut AnyConnection, row: &OperatorRow) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO operators (name, password_hash, permissions, created_at, updated_at, \
         generation) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
    )
    .bind(&row.name)
    .bind(&row.password_hash)
    .bind(&row.permissions)
    .bind(row.created_at)
    .bind(row.updated_at)
    .bind(&row.generation)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Inserts or replaces an operator; true when it was created.
pub async fn upsert(conn: &mut AnyConnection, row: &OperatorRow) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE operators SET password_hash = $2, permissions = $3, updated_at = $4, \
         generation = $5 WHERE name = $1",
    )
    .bind(&row.name)
    .bind(&row.password_hash)
    .bind(&row.permissions)
    .bind(row.updated_at)
    .bind(&row.generation)
    .execute(&mut *conn)
    .await?;
    if updated.rows_affected() == 1 {
        return Ok(false);
    }
    // Created between the UPDATE and here by another writer: the conflict the plain INSERT
    // used to raise.
    if !insert_new(conn, row).await? {
        return Err(StoreError::Conflict { constraint: "operators.name".into() });
    }
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

/// One page of operators in name order (byte order) after `after`.
pub async fn page(
    conn: &mut AnyConnection,
    after: &str,
    limit: i64,
) -> Result<Vec<OperatorRow>, StoreError> {
    Ok(sqlx::query_as::<_, OperatorRow>(
        "SELECT name, password_hash, permissions, created_at, updated_at, generation \
         FROM operators WHERE name > $1 ORDER BY name LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}
