//! `audit_log` and its chain head. Appends lock the head row so the chain stays linear across
//! writers and instances: SQLite's `BEGIN IMMEDIATE` already serializes writers, PostgreSQL uses
//! `SELECT … FOR UPDATE` — the one query whose text differs by dialect.

use sqlx::AnyConnection;

use super::{Dialect, StoreError};

/// One audit row as stored.
#[derive(Debug, Clone, sqlx::FromRow, PartialEq, Eq)]
pub struct AuditRow {
    /// sequence number, from 1, contiguous
    pub seq: i64,
    /// unix seconds
    pub at: i64,
    /// who (principal name, `anonymous`, `system`)
    pub actor: String,
    /// dotted action (`device.create`)
    pub action: String,
    /// object id
    pub target: String,
    /// `success` | `failure`
    pub outcome: String,
    /// client IP
    pub client_addr: Option<String>,
    /// failures a summary row stands for (NULL on every other row)
    pub failure_count: Option<i64>,
    /// hash of the previous row (64 zeros for the first)
    pub prev_hash: String,
    /// HMAC of this row
    pub hash: String,
}

/// Locks and reads the chain head `(seq, hash)` inside a write transaction.
pub async fn lock_head(
    conn: &mut AnyConnection,
    dialect: Dialect,
) -> Result<(i64, String), StoreError> {
    let sql = match dialect {
        Dialect::Postgres => "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE",
        Dialect::Sqlite => "SELECT seq, hash FROM audit_head WHERE id = 1",
    };
    Ok(sqlx::query_as::<_, (i64, String)>(sql).fetch_one(conn).await?)
}

/// Adds the insert of consecutive rows and the move of the head to the last to `w` (the caller
/// holds the head lock).
pub fn append(w: &mut super::Writes, rows: &[AuditRow]) {
    let Some(last) = rows.last() else { return };
    insert_rows(w, rows);
    w.statement("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(last.seq)
        .bind(&last.hash);
}

/// PostgreSQL, without a lock: gates `w` on moving the head from `expected` — the head the
/// rows were chained to — to the last row, then adds their insert. If another writer moved the
/// head meanwhile, the gate does not match and nothing of `w` is written. Call on an empty `w`.
pub fn append_if_head(w: &mut super::Writes, rows: &[AuditRow], expected: &(i64, String)) {
    let Some(last) = rows.last() else { return };
    w.gate(
        "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1 AND seq = $3 AND hash = $4 \
         RETURNING seq",
    )
    .bind(last.seq)
    .bind(&last.hash)
    .bind(expected.0)
    .bind(&expected.1);
    insert_rows(w, rows);
}

fn insert_rows(w: &mut super::Writes, rows: &[AuditRow]) {
    w.insert(
        "audit_log",
        "seq, at, actor, action, target, outcome, client_addr, failure_count, prev_hash, hash",
        rows.len(),
    );
    for row in rows {
        w.bind(row.seq)
            .bind(row.at)
            .bind(&row.actor)
            .bind(&row.action)
            .bind(&row.target)
            .bind(&row.outcome)
            .bind(row.client_addr.as_deref())
            .bind(row.failure_count)
            .bind(&row.prev_hash)
            .bind(&row.hash);
    }
}

/// Rows with `seq > after`, ascending, at most `limit`.
pub async fn page(
    conn: &mut AnyConnection,
    after: i64,
    limit: i64,
    filter: &AuditFilter<'_>,
) -> Result<Vec<AuditRow>, StoreError> {
    Ok(sqlx::query_as::<_, AuditRow>(
        "SELECT seq, at, actor, action, target, outcome, client_addr, failure_count, prev_hash, \
         hash FROM audit_log WHERE seq > $1 AND ($3 IS NULL OR action = $3) \
         AND ($4 IS NULL OR substr(target, 1, length($4)) = $4) \
         AND ($5 IS NULL OR outcome = $5) ORDER BY seq LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .bind(filter.action)
    .bind(filter.target_prefix)
    .bind(filter.outcome)
    .fetch_all(conn)
    .await?)
}

/// What an audit page is limited to (None: anything).
#[derive(Debug, Default, Clone, Copy)]
pub struct AuditFilter<'a> {
    /// exactly this action
    pub action: Option<&'a str>,
    /// targets starting with this
    pub target_prefix: Option<&'a str>,
    /// `success` or `failure`
    pub outcome: Option<&'a str>,
}

/// The `(seq, hash)` of the highest audit row present (`(0, 64 zeros)` for an empty chain):
/// what a checkpoint may sign. Unlike [`head`], never a row cut from the end.
pub async fn last_row(conn: &mut AnyConnection) -> Result<(i64, String), StoreError> {
    Ok(sqlx::query_as::<_, (i64, String)>(
        "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
    )
    .fetch_optional(conn)
    .await?
    .unwrap_or_else(|| (0, "0".repeat(64))))
}

/// The chain head writers lock (read here without locking).
pub async fn head(conn: &mut AnyConnection) -> Result<(i64, String), StoreError> {
    Ok(sqlx::query_as::<_, (i64, String)>("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_one(conn)
        .await?)
}
