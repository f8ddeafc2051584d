//! The inventory of sealed columns and the batch re-sealing used by `rotate-master-key`.
//!
//! Every table with a secret column is listed in [`SEALED`]; adding a secret column without an
//! entry here would leave it behind on rotation, so the list sits next to the SQL that walks it.
//! Table and column names are compile-time constants, never input.

use sqlx::{AnyConnection, AssertSqlSafe};

use super::StoreError;

/// A table with sealed columns.
#[derive(Debug)]
pub struct SealedTable {
    /// table name (also the seal context's table)
    pub table: &'static str,
    /// primary key column (the seal context's row id)
    pub id: &'static str,
    /// sealed columns (nullable ones are skipped when NULL)
    pub columns: &'static [&'static str],
}

/// Every sealed column of the schema.
pub const SEALED: &[SealedTable] = &[
    SealedTable { table: "secrets", id: "name", columns: &["value"] },
    SealedTable { table: "issuers", id: "id", columns: &["private_key"] },
    SealedTable { table: "policies", id: "name", columns: &["primary_key", "secondary_key"] },
    SealedTable { table: "devices", id: "device_id", columns: &["primary_key", "secondary_key"] },
    SealedTable {
        table: "enrollment_groups",
        id: "id",
        columns: &["primary_key", "secondary_key"],
    },
    SealedTable {
        table: "enrollments",
        id: "registration_id",
        columns: &["primary_key", "secondary_key"],
    },
];

/// A row to re-seal: id, version, one blob per column (None when NULL).
#[derive(Debug)]
pub struct SealedRow {
    /// primary key
    pub id: String,
    /// current key version
    pub key_version: i64,
    /// blobs in `columns` order
    pub blobs: Vec<Option<Vec<u8>>>,
}

/// Rows of `t` sealed below `target`, at most `limit`.
pub async fn below(
    conn: &mut AnyConnection,
    t: &SealedTable,
    target: i64,
    limit: i64,
) -> Result<Vec<SealedRow>, StoreError> {
    use sqlx::Row as _;
    let sql = format!(
        "SELECT {id}, key_version, {cols} FROM {table} \
         WHERE key_version IS NOT NULL AND key_version < $1 ORDER BY {id} LIMIT $2",
        id = t.id,
        cols = t.columns.join(", "),
        table = t.table
    );
    let rows = sqlx::query(AssertSqlSafe(sql)).bind(target).bind(limit).fetch_all(conn).await?;
    rows.into_iter()
        .map(|r| {
            let blobs = (0..t.columns.len())
                .map(|i| r.try_get::<Option<Vec<u8>>, _>(i + 2))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(SealedRow { id: r.try_get(0)?, key_version: r.try_get(1)?, blobs })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(StoreError::from)
}

/// Writes re-sealed blobs, conditional on the row still having `old_version` (a concurrent
/// writer that re-sealed or replaced it wins). Returns whether the row was updated.
pub async fn update(
    conn: &mut AnyConnection,
    t: &SealedTable,
    id: &str,
    old_version: i64,
    new_version: i64,
    blobs: &[Option<Vec<u8>>],
) -> Result<bool, StoreError> {
    let sets: Vec<String> =
        t.columns.iter().enumerate().map(|(i, c)| format!("{c} = ${}", i + 4)).collect();
    let sql = format!(
        "UPDATE {table} SET key_version = $1, {sets} WHERE {id} = $2 AND key_version = $3",
        table = t.table,
        sets = sets.join(", "),
        id = t.id
    );
    let mut q = sqlx::query(AssertSqlSafe(sql)).bind(new_version).bind(id).bind(old_version);
    for b in blobs {
        q = q.bind(b.clone());
    }
    Ok(q.execute(conn).await?.rows_affected() == 1)
}

/// Rows still sealed below `target`, over every table.
pub async fn count_below(conn: &mut AnyConnection, target: i64) -> Result<i64, StoreError> {
    let mut total = 0;
    for t in SEALED {
        let sql = format!(
            "SELECT COUNT(*) FROM {} WHERE key_version IS NOT NULL AND key_version < $1",
            t.table
        );
        let n: i64 =
            sqlx::query_scalar(AssertSqlSafe(sql)).bind(target).fetch_one(&mut *conn).await?;
        total += n;
    }
    Ok(total)
}

/// Makes SQLite overwrite deleted content with zeros on this connection (`secure_delete`), so the
/// pages a re-sealing transaction writes (into the WAL, then the file) carry no freed copy of the
/// old ciphertext. A connection setting, cheap to repeat; nothing to do on PostgreSQL.
pub async fn secure_delete(conn: &mut AnyConnection) -> Result<(), StoreError> {
    if super::dialect_of(conn) == super::Dialect::Sqlite {
        sqlx::query("PRAGMA secure_delete = ON").execute(&mut *conn).await?;
    }
    Ok(())
}

/// What [`scrub`] did.
#[derive(Debug, Default)]
pub struct Scrubbed {
    /// Tables the engine could not rewrite (it has no `VACUUM FULL`), with its message.
    pub unsupported: Vec<(&'static str, String)>,
}

/// Attempts at a truncating checkpoint while another connection keeps reading an old snapshot.
const CHECKPOINT_ATTEMPTS: u32 = 50;

/// After every sealed row was rewritten: leaves no copy of a replaced ciphertext in the
/// database's own storage (API.md A25).
///
/// SQLite: the WAL is checkpointed and truncated to zero bytes, `VACUUM` rebuilds the file (every
/// page is written anew from live rows, so no free page, free cell or dropped overflow page keeps
/// old bytes, and the file is cut to its new size), then the WAL that `VACUUM` wrote is
/// checkpointed and truncated again. PostgreSQL: once no transaction or snapshot older than the
/// call is left, `VACUUM FULL` of every table in [`SEALED`] (table, TOAST and indexes written to new
/// files, the old ones removed); an engine without it
/// (CockroachDB, YugabyteDB) is reported in [`Scrubbed::unsupported`], not as an error. What
/// PostgreSQL's WAL, replicas, archives and backups keep is said in docs/operations.md.
pub async fn scrub(conn: &mut AnyConnection) -> Result<Scrubbed, StoreError> {
    let mut done = Scrubbed::default();
    match super::dialect_of(conn) {
        super::Dialect::Sqlite => {
            secure_delete(conn).await?;
            truncate_wal(conn).await?;
            sqlx::query("VACUUM").execute(&mut *conn).await?;
            truncate_wal(conn).await?;
        }
        super::Dialect::Postgres => {
            wait_for_older_snapshots(conn).await?;
            for t in SEALED {
                let sql = format!("VACUUM FULL {}", t.table);
                // VACUUM refuses to run in a transaction block: the simple query protocol.
                match sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *conn).await {
                    Ok(_) => {}
                    // feature_not_supported, syntax_error: an engine without VACUUM FULL.
                    Err(sqlx::Error::Database(db))
                        if db.code().is_some_and(|c| c == "0A000" || c == "42601") =>
                    {
                        done.unsupported.push((t.table, db.message().to_owned()));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(done)
}

/// How long [`scrub`] waits for transactions older than the re-sealing to end (PostgreSQL).
const SNAPSHOT_WAIT_ATTEMPTS: u32 = 600;

/// Waits until no snapshot that `VACUUM FULL` must respect predates this call. `VACUUM FULL`
/// copies a dead row version that some snapshot may still see ("recently dead"): a request or
/// an auto-analyze of this database whose snapshot predates the re-sealing, or — through
/// `VACUUM FULL`'s own snapshot — any transaction of the whole cluster still running from
/// before it, would keep the old ciphertexts in the rewritten table. So: wait until the oldest
/// running transaction id of the cluster is newer than a fresh one taken now, and no session
/// of this database holds an older snapshot (`backend_xmin`, compared by age, so wraparound
/// does not matter). Sessions of other roles show no `backend_xmin` to an unprivileged role; an
/// engine without these functions is not waited for (it has no `VACUUM FULL` to feed either).
async fn wait_for_older_snapshots(conn: &mut AnyConnection) -> Result<(), StoreError> {
    // A fresh transaction id, newer than every re-sealing transaction (they committed).
    let Ok(now_xid) =
        sqlx::query_scalar::<_, i64>("SELECT txid_current()").fetch_one(&mut *conn).await
    else {
        return Ok(());
    };
    for attempt in 1..=SNAPSHOT_WAIT_ATTEMPTS {
        let older: i64 = match sqlx::query_scalar(
            "SELECT (CASE WHEN txid_snapshot_xmin(txid_current_snapshot()) <= $1 THEN 1 ELSE 0 END) \
             + (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                AND pid <> pg_backend_pid() AND backend_xmin IS NOT NULL \
                AND age(backend_xmin) > age(($1 % 4294967296)::text::xid))",
        )
        .bind(now_xid)
        .fetch_one(&mut *conn)
        .await
        {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot see older snapshots; VACUUM FULL runs now");
                return Ok(());
            }
        };
        if older == 0 {
            return Ok(());
        }
        if attempt < SNAPSHOT_WAIT_ATTEMPTS {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    Err(StoreError::Db(sqlx::Error::Protocol(
        "a transaction or snapshot older than the re-sealing stayed open for a minute".into(),
    )))
}

/// `PRAGMA wal_checkpoint(TRUNCATE)` until it reports success: it fails (busy = 1) while another
/// connection reads an older snapshot, e.g. a running server's request.
async fn truncate_wal(conn: &mut AnyConnection) -> Result<(), StoreError> {
    use sqlx::Row as _;
    for attempt in 1..=CHECKPOINT_ATTEMPTS {
        let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").fetch_one(&mut *conn).await?;
        let busy: i64 = row.try_get(0)?;
        if busy == 0 {
            return Ok(());
        }
        if attempt < CHECKPOINT_ATTEMPTS {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    Err(StoreError::Db(sqlx::Error::Protocol(
        "the WAL could not be truncated: another connection kept reading an old snapshot".into(),
    )))
}
