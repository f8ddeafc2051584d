//! `devices`: the identity registry. Keys are stored sealed; etag changes on every write, and
//! writes that carry an expected etag are conditional on it (optimistic concurrency).

use sqlx::AnyConnection;

use super::StoreError;

/// One device row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeviceRow {
    /// id (IoT Hub character set)
    pub device_id: String,
    /// enabled | disabled
    pub status: String,
    /// why disabled
    pub status_reason: Option<String>,
    /// sas | x509_ca | x509_thumbprint
    pub auth_type: String,
    /// master key version of the keys
    pub key_version: Option<i64>,
    /// sealed primary key
    pub primary_key: Option<Vec<u8>>,
    /// sealed secondary key
    pub secondary_key: Option<Vec<u8>>,
    /// SHA-256 hex
    pub primary_thumbprint: Option<String>,
    /// SHA-256 hex
    pub secondary_thumbprint: Option<String>,
    /// changes on every write
    pub etag: String,
    /// changes when the device is deleted and re-created
    pub generation_id: String,
    /// JSON object
    pub tags: String,
    /// gateway
    pub parent_id: Option<String>,
    /// group that enrolled it
    pub enrollment_group_id: Option<String>,
    /// created
    pub created_at: i64,
    /// updated
    pub updated_at: i64,
}

impl DeviceRow {
    /// A new, enabled device without credentials or tags (the caller sets them).
    pub fn new(device_id: &str, generation_id: String, now: i64) -> Self {
        Self {
            device_id: device_id.to_owned(),
            status: "enabled".into(),
            status_reason: None,
            auth_type: String::new(),
            key_version: None,
            primary_key: None,
            secondary_key: None,
            primary_thumbprint: None,
            secondary_thumbprint: None,
            etag: String::new(),
            generation_id,
            tags: "{}".into(),
            parent_id: None,
            enrollment_group_id: None,
            created_at: now,
            updated_at: now,
        }
    }
}

/// Reads one device.
pub async fn get(conn: &mut AnyConnection, id: &str) -> Result<Option<DeviceRow>, StoreError> {
    Ok(sqlx::query_as::<_, DeviceRow>(
        "SELECT device_id, status, status_reason, auth_type, key_version, primary_key, \
         secondary_key, primary_thumbprint, secondary_thumbprint, etag, generation_id, tags, parent_id, \
         enrollment_group_id, created_at, updated_at FROM devices WHERE device_id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// Whether a device exists.
pub async fn exists(conn: &mut AnyConnection, id: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM devices WHERE device_id = $1")
        .bind(id)
        .fetch_one(conn)
        .await?
        > 0)
}

const COLUMNS: &str = "device_id, status, status_reason, auth_type, key_version, primary_key, \
     secondary_key, primary_thumbprint, secondary_thumbprint, etag, generation_id, tags, parent_id, \
     enrollment_group_id, created_at, updated_at";

/// Which of `ids` exist (one round trip).
pub async fn existing(
    conn: &mut AnyConnection,
    ids: &[&str],
) -> Result<std::collections::HashSet<String>, StoreError> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let sql = format!(
        "SELECT device_id FROM devices WHERE device_id IN ({})",
        super::placeholders(super::dialect_of(conn), 1, ids.len())
    );
    let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
    for id in ids {
        q = q.bind(*id);
    }
    Ok(q.fetch_all(conn).await?.into_iter().collect())
}

/// Inserts a device (Conflict when the id exists).
pub async fn insert(conn: &mut AnyConnection, d: &DeviceRow) -> Result<(), StoreError> {
    insert_many(conn, std::slice::from_ref(d)).await
}

/// Inserts new devices in one statement (Conflict, and nothing inserted, when any id exists).
pub async fn insert_many(conn: &mut AnyConnection, rows: &[DeviceRow]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let sql = super::insert_values_sql(super::dialect_of(conn), "devices", COLUMNS, rows.len());
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for d in rows {
        q = q
            .bind(&d.device_id)
            .bind(&d.status)
            .bind(d.status_reason.as_deref())
            .bind(&d.auth_type)
            .bind(d.key_version)
            .bind(d.primary_key.as_deref())
            .bind(d.secondary_key.as_deref())
            .bind(d.primary_thumbprint.as_deref())
            .bind(d.secondary_thumbprint.as_deref())
            .bind(&d.etag)
            .bind(&d.generation_id)
            .bind(&d.tags)
            .bind(d.parent_id.as_deref())
            .bind(d.enrollment_group_id.as_deref())
            .bind(d.created_at)
            .bind(d.updated_at);
    }
    q.execute(conn).await?;
    Ok(())
}

/// Replaces every mutable column, only if the stored etag is still `expected_etag`.
/// Returns false when the etag moved (someone else wrote first).
pub async fn replace(
    conn: &mut AnyConnection,
    d: &DeviceRow,
    expected_etag: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE devices SET status = $2, status_reason = $3, auth_type = $4, key_version = $5, \
         primary_key = $6, secondary_key = $7, primary_thumbprint = $8, secondary_thumbprint = $9, \
         etag = $10, tags = $11, parent_id = $12, enrollment_group_id = $13, updated_at = $14 \
         WHERE device_id = $1 AND etag = $15",
    )
    .bind(&d.device_id)
    .bind(&d.status)
    .bind(d.status_reason.as_deref())
    .bind(&d.auth_type)
    .bind(d.key_version)
    .bind(d.primary_key.as_deref())
    .bind(d.secondary_key.as_deref())
    .bind(d.primary_thumbprint.as_deref())
    .bind(d.secondary_thumbprint.as_deref())
    .bind(&d.etag)
    .bind(&d.tags)
    .bind(d.parent_id.as_deref())
    .bind(d.enrollment_group_id.as_deref())
    .bind(d.updated_at)
    .bind(expected_etag)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes a device if its etag is still `expected_etag`.
pub async fn delete(
    conn: &mut AnyConnection,
    id: &str,
    expected_etag: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM devices WHERE device_id = $1 AND etag = $2")
        .bind(id)
        .bind(expected_etag)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// One page in `device_id` byte order after `after`, optionally filtered by status and id
/// prefix (the prefix is matched with a range so the primary key index serves it).
pub async fn page(
    conn: &mut AnyConnection,
    after: &str,
    status: Option<&str>,
    prefix: Option<&str>,
    limit: i64,
) -> Result<Vec<DeviceRow>, StoreError> {
    let prefix_lo = prefix.unwrap_or("");
    let after = if after < prefix_lo { prefix_lo } else { after };
    // Upper bound of the prefix range: the prefix followed by U+10FFFF sorts after every id
    // that starts with it (ids are ASCII).
    let prefix_hi = prefix.map(|p| format!("{p}\u{10FFFF}"));
    Ok(sqlx::query_as::<_, DeviceRow>(
        "SELECT device_id, status, status_reason, auth_type, key_version, primary_key, \
         secondary_key, primary_thumbprint, secondary_thumbprint, etag, generation_id, tags, parent_id, \
         enrollment_group_id, created_at, updated_at FROM devices \
         WHERE device_id > $1 AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR device_id < $3) \
         ORDER BY device_id LIMIT $4",
    )
    .bind(after)
    .bind(status)
    .bind(prefix_hi)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}
