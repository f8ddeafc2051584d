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
    /// admin | enrollment_group | enrollment: who may re-provision it (the owner's id is
    /// `enrollment_group_id` for a group, the device id for an individual enrollment)
    pub owner_kind: String,
}

impl DeviceRow {
    /// Decodes a row of `SELECT_ONE` read by [`super::direct`].
    fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            device_id: r.get(0)?,
            status: r.get(1)?,
            status_reason: r.get(2)?,
            auth_type: r.get(3)?,
            key_version: r.get(4)?,
            primary_key: r.get(5)?,
            secondary_key: r.get(6)?,
            primary_thumbprint: r.get(7)?,
            secondary_thumbprint: r.get(8)?,
            etag: r.get(9)?,
            generation_id: r.get(10)?,
            tags: r.get(11)?,
            parent_id: r.get(12)?,
            enrollment_group_id: r.get(13)?,
            created_at: r.get(14)?,
            updated_at: r.get(15)?,
            owner_kind: r.get(16)?,
        })
    }

    /// The enrollment group that owns the device, if a group does (scopes by group admit it).
    pub fn owner_group(&self) -> Option<&str> {
        group_owner(Some(&self.owner_kind), self.enrollment_group_id.as_deref())
    }

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
            owner_kind: "admin".into(),
        }
    }
}

/// A device's owner as a read joined from another table sees it (both `None` when the device
/// row is gone): select `d.owner_kind AS owner_kind, d.enrollment_group_id AS owner_group`.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct JoinedOwner {
    /// admin | enrollment_group | enrollment
    pub owner_kind: Option<String>,
    /// the device's enrollment group
    pub owner_group: Option<String>,
}

impl JoinedOwner {
    /// The group that owns the device, if a group does.
    pub fn group(&self) -> Option<&str> {
        group_owner(self.owner_kind.as_deref(), self.owner_group.as_deref())
    }
}

/// The group among a device's owner columns: its `enrollment_group_id` when the owner is a group.
fn group_owner<'a>(kind: Option<&str>, group: Option<&'a str>) -> Option<&'a str> {
    group.filter(|_| kind == Some("enrollment_group"))
}

/// Every column of `devices`, in `DeviceRow` order (the order `from_sqlite` decodes): the one
/// list each statement below is built from.
macro_rules! columns {
    () => {
        "device_id, status, status_reason, auth_type, key_version, primary_key, secondary_key, \
         primary_thumbprint, secondary_thumbprint, etag, generation_id, tags, parent_id, \
         enrollment_group_id, created_at, updated_at, owner_kind"
    };
}

const COLUMNS: &str = columns!();

/// `SELECT` of one device by id.
const SELECT_ONE: &str = concat!("SELECT ", columns!(), " FROM devices WHERE device_id = $1");

/// Reads one device.
pub async fn get(conn: &mut AnyConnection, id: &str) -> Result<Option<DeviceRow>, StoreError> {
    Ok(sqlx::query_as::<_, DeviceRow>(SELECT_ONE).bind(id).fetch_optional(conn).await?)
}

/// Reads one committed device outside any transaction: hop-free on SQLite (the token-check hot
/// path), a pooled connection otherwise.
pub async fn lookup(store: &super::Store, id: &str) -> Result<Option<DeviceRow>, StoreError> {
    match store.direct().and_then(|d| d.row(SELECT_ONE, [id], DeviceRow::from_sqlite)) {
        Some(found) => Ok(found),
        None => get(&mut *store.conn().await?, id).await,
    }
}

/// Whether a device exists.
pub async fn exists(conn: &mut AnyConnection, id: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM devices WHERE device_id = $1")
        .bind(id)
        .fetch_one(conn)
        .await?
        > 0)
}

/// Which of `ids` exist (one round trip).
pub async fn existing(
    conn: &mut AnyConnection,
    ids: &[&str],
) -> Result<std::collections::HashSet<String>, StoreError> {
    super::present(conn, "devices", "device_id", ids).await
}

/// `(enabled, disabled)` devices whose id has `prefix` and, with `groups`, that one of those
/// groups owns.
pub async fn counts(
    conn: &mut AnyConnection,
    prefix: Option<&str>,
    groups: Option<&[String]>,
) -> Result<(i64, i64), StoreError> {
    if groups.is_some_and(<[String]>::is_empty) {
        return Ok((0, 0));
    }
    // Placeholders numbered in bind order (plain `?` on SQLite): the prefix twice, then groups.
    let dialect = super::dialect_of(conn);
    let mut clauses = vec!["1 = 1".to_owned()];
    let mut binds: Vec<&str> = Vec::new();
    if let Some(p) = prefix {
        clauses.push(format!(
            "substr(device_id, 1, length({})) = {}",
            super::placeholders(dialect, 1, 1),
            super::placeholders(dialect, 2, 1)
        ));
        binds.extend([p, p]);
    }
    if let Some(g) = groups {
        clauses.push(format!(
            "owner_kind = 'enrollment_group' AND enrollment_group_id IN ({})",
            super::placeholders(dialect, binds.len() + 1, g.len())
        ));
        binds.extend(g.iter().map(String::as_str));
    }
    let sql = format!(
        "SELECT status, COUNT(*) FROM devices WHERE {} GROUP BY status",
        clauses.join(" AND ")
    );
    let mut q = sqlx::query_as::<_, (String, i64)>(sqlx::AssertSqlSafe(sql));
    for b in binds {
        q = q.bind(b);
    }
    let rows = q.fetch_all(conn).await?;
    let count = |s: &str| rows.iter().find(|(st, _)| st == s).map_or(0, |(_, n)| *n);
    Ok((count("enabled"), count("disabled")))
}

/// Inserts a device (Conflict when the id exists).
pub async fn insert(conn: &mut AnyConnection, d: &DeviceRow) -> Result<(), StoreError> {
    let mut w = super::Writes::new(super::dialect_of(conn));
    insert_many(&mut w, std::slice::from_ref(d));
    w.execute(conn).await
}

/// Adds one multi-row insert of `rows` to `w` (nothing for none).
pub fn insert_many(w: &mut super::Writes, rows: &[DeviceRow]) {
    w.insert("devices", COLUMNS, rows.len());
    for d in rows {
        w.bind(&d.device_id)
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
            .bind(d.updated_at)
            .bind(&d.owner_kind);
    }
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

/// `SELECT` of one page: `$1` after this id, `$2` status or NULL, `$3` prefix upper bound or
/// NULL, `$4` limit.
const SELECT_PAGE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM devices WHERE device_id > $1 AND ($2 IS NULL OR status = $2) \
     AND ($3 IS NULL OR device_id < $3) ORDER BY device_id LIMIT $4"
);

/// The bounds of a page: the cursor raised to just below the prefix, and the prefix's upper
/// bound (the prefix followed by U+10FFFF sorts after every id that starts with it; ids are
/// ASCII), so the primary key index serves a prefix as a range.
fn page_bounds(after: &str, prefix: Option<&str>) -> (String, Option<String>) {
    let upper = prefix.map(|p| format!("{p}\u{10FFFF}"));
    match prefix {
        Some(p) if after < p => (just_below(p), upper),
        _ => (after.to_owned(), upper),
    }
}

/// A string that sorts after every id below `p` and before `p` itself, for the exclusive
/// `device_id > $1`: raising the cursor to `p` itself would leave out the device whose id is
/// exactly the prefix (a search by a full id found nothing). It is `p` with its last character
/// lowered by one and U+10FFFF after it (no ASCII id lies between the two).
fn just_below(p: &str) -> String {
    let mut chars: Vec<char> = p.chars().collect();
    let Some(last) = chars.pop() else { return String::new() };
    if let Some(lower) = (last as u32).checked_sub(1) {
        // Below U+E000 lies the surrogate gap: the next character down is U+D7FF.
        chars.push(char::from_u32(lower).unwrap_or('\u{D7FF}'));
        chars.push('\u{10FFFF}');
    }
    chars.into_iter().collect()
}

/// One page in `device_id` byte order after `after`, optionally filtered by status and id
/// prefix.
pub async fn page(
    conn: &mut AnyConnection,
    after: &str,
    status: Option<&str>,
    prefix: Option<&str>,
    limit: i64,
) -> Result<Vec<DeviceRow>, StoreError> {
    let (after, prefix_hi) = page_bounds(after, prefix);
    Ok(sqlx::query_as::<_, DeviceRow>(SELECT_PAGE)
        .bind(after)
        .bind(status)
        .bind(prefix_hi)
        .bind(limit)
        .fetch_all(conn)
        .await?)
}

/// [`page`] of committed rows outside any transaction: hop-free on SQLite (sqlx would hand
/// every row across threads), a pooled connection otherwise.
pub async fn page_committed(
    store: &super::Store,
    after: &str,
    status: Option<&str>,
    prefix: Option<&str>,
    limit: i64,
) -> Result<Vec<DeviceRow>, StoreError> {
    let direct = store.direct().and_then(|d| {
        let (after, prefix_hi) = page_bounds(after, prefix);
        d.rows(
            SELECT_PAGE,
            rusqlite::params![after, status, prefix_hi, limit],
            DeviceRow::from_sqlite,
        )
    });
    match direct {
        Some(rows) => Ok(rows),
        None => page(&mut *store.conn().await?, after, status, prefix, limit).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// A prefix that is a whole id finds that id: the raised cursor sorts below it, above
    /// every id that does not start with the prefix.
    #[test]
    fn the_raised_cursor_sorts_just_below_the_prefix() {
        let (after, upper) = page_bounds("", Some("dev-9"));
        assert!(after.as_str() < "dev-9" && after.as_str() > "dev-8zzzz", "{after:?}");
        assert!(upper.as_deref().is_some_and(|u| u > "dev-9zzz"));
        assert_eq!(page_bounds("dev-95", Some("dev-9")).0, "dev-95", "a cursor inside stays");
        assert_eq!(page_bounds("a", None), ("a".to_owned(), None));
        assert_eq!(just_below(""), "");
        assert_eq!(just_below("\0"), "");
        assert_eq!(just_below("a\u{E000}"), "a\u{D7FF}\u{10FFFF}");
    }

    /// The hop-free read sees every commit at once (it is a read, not a cache) and decodes the
    /// row exactly as the sqlx path does.
    #[tokio::test]
    async fn direct_lookup_reads_the_latest_commit() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("db.sqlite").display());
        let store = Store::connect(&crate::config::DatabaseUrl::new(url), 2).await.unwrap();
        store.migrate().await.unwrap();
        let mut row = DeviceRow::new("dev-1", "g1".into(), 7);
        row.auth_type = "sas".into();
        row.key_version = Some(1);
        row.primary_key = Some(vec![1, 2, 3]);
        row.secondary_key = Some(vec![4, 5]);
        row.etag = "e1".into();
        let direct = |id: &'static str| {
            store.direct().unwrap().row(SELECT_ONE, [id], DeviceRow::from_sqlite)
        };
        assert!(matches!(direct("dev-1"), Some(None)), "direct path taken, nothing there");

        let mut tx = store.begin().await.unwrap();
        insert(&mut tx, &row).await.unwrap();
        tx.commit().await.unwrap();
        let seen = direct("dev-1").unwrap().unwrap();
        let pooled = get(&mut store.conn().await.unwrap(), "dev-1").await.unwrap().unwrap();
        assert_eq!(format!("{seen:?}"), format!("{pooled:?}"));
        assert_eq!(seen.primary_key.as_deref(), Some(&[1u8, 2, 3][..]));

        let mut changed = row.clone();
        changed.etag = "e2".into();
        changed.status = "disabled".into();
        let mut tx = store.begin().await.unwrap();
        assert!(replace(&mut tx, &changed, "e1").await.unwrap());
        tx.commit().await.unwrap();
        let seen = lookup(&store, "dev-1").await.unwrap().unwrap();
        assert_eq!((seen.etag.as_str(), seen.status.as_str()), ("e2", "disabled"));

        let mut tx = store.begin().await.unwrap();
        assert!(delete(&mut tx, "dev-1", "e2").await.unwrap());
        tx.commit().await.unwrap();
        assert!(lookup(&store, "dev-1").await.unwrap().is_none());
    }
}
