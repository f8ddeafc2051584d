//! Storage: one `sqlx::AnyPool` over SQLite (embedded default) or PostgreSQL.
//!
//! Every function is a single portable SQL text with `$N` placeholders; the only dialect switches
//! are the connect hook (SQLite pragmas), how a write transaction begins (`BEGIN IMMEDIATE` on
//! SQLite, so read-then-write never deadlocks on lock upgrade), the chain-head lock of the
//! audit log (`FOR UPDATE` on PostgreSQL) and how [`Writes`] sends several writes at once (one
//! statement of data-modifying `WITH` clauses on PostgreSQL, one multi-statement query on
//! SQLite). Secret columns are stored sealed; this layer never sees plaintext secrets.

pub mod audit;
pub mod aws;
pub mod bundles;
pub mod certificates;
pub mod crls;
pub mod devices;
pub mod direct;
pub mod enrollment;
pub mod issuers;
pub mod leases;
pub mod meta;
pub mod operators;
pub mod policies;
pub mod sealed;
pub mod writes;

pub use writes::Writes;

use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool};

use crate::config::DatabaseUrl;

/// A connection or a transaction of the store, as use cases name it (they never name `sqlx`).
pub type Conn = sqlx::AnyConnection;

/// A write transaction. On SQLite it also holds the process-wide writer lock: SQLite has one
/// writer, and queueing writers here (FIFO, no sleeping) instead of in SQLite's busy handler
/// (which backs off in sleeps of up to 100 ms) keeps write latency flat under contention.
pub struct Tx {
    tx: sqlx::Transaction<'static, Any>,
    _writer: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Tx {
    /// Commits.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    /// Rolls back (dropping a `Tx` does too).
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

impl std::ops::Deref for Tx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &sqlx::AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.tx
    }
}

/// A savepoint inside `tx` (a nested transaction): rolled back on drop, released by `commit`.
pub async fn savepoint(tx: &mut Conn) -> Result<sqlx::Transaction<'_, Any>, StoreError> {
    Ok(sqlx::Connection::begin(tx).await?)
}

/// Which SQL engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL (or a compatible distributed engine).
    Postgres,
    /// Embedded SQLite.
    Sqlite,
}

/// Storage errors, typed for the layers above.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A uniqueness or foreign-key constraint refused the write.
    #[error("conflict on {constraint}")]
    Conflict {
        /// the constraint or column named by the database
        constraint: String,
    },
    /// The row does not exist.
    #[error("not found")]
    NotFound,
    /// A concurrent transaction won (deadlock victim, serialization failure): the same work
    /// may succeed when tried again.
    #[error("conflicting concurrent transaction")]
    Contention(#[source] sqlx::Error),
    /// The database cannot be reached (pool timeout, I/O, closed pool).
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// A value the database cannot store as given (PostgreSQL text refuses NUL characters).
    #[error("value cannot be stored")]
    Unstorable(#[source] sqlx::Error),
    /// Any other database error.
    #[error("database error")]
    Db(#[source] sqlx::Error),
    /// Migrations failed.
    #[error("migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// The store is closed (the server is shutting down).
    pub fn closed() -> Self {
        StoreError::Unavailable(sqlx::Error::PoolClosed)
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict {
                constraint: db.constraint().unwrap_or(db.message()).to_owned(),
            },
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => StoreError::Unavailable(e),
            sqlx::Error::Database(db) if db.code().is_some_and(|c| connection_lost(&c)) => {
                StoreError::Unavailable(e)
            }
            // deadlock_detected, serialization_failure
            sqlx::Error::Database(db)
                if db.code().is_some_and(|c| c == "40P01" || c == "40001") =>
            {
                StoreError::Contention(e)
            }
            // character_not_in_repertoire (NUL in text), untranslatable_character
            sqlx::Error::Database(db)
                if db.code().is_some_and(|c| c == "22021" || c == "22P05") =>
            {
                StoreError::Unstorable(e)
            }
            _ => StoreError::Db(e),
        }
    }
}

/// SQLSTATEs that mean "the server is going away or not there yet", not "this statement is
/// wrong": connection exceptions (class 08), administrator / crash shutdown and "cannot connect
/// now" (57P01–57P03), too many connections (53300), and SQLite's busy / locked (5, 6).
fn connection_lost(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300" | "5" | "6")
}

/// The database handle shared by every request.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
    policy_generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    group_generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    direct: Option<std::sync::Arc<direct::DirectReads>>,
}

impl Store {
    /// Connects (creating the SQLite file if needed) without migrating.
    pub async fn connect(url: &DatabaseUrl, max_connections: u32) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let dialect = if url.is_postgres() { Dialect::Postgres } else { Dialect::Sqlite };
        let options: AnyConnectOptions = url.expose().parse().map_err(StoreError::Db)?;
        if let Some(file) = url.sqlite_file() {
            create_private_database_file(&file);
        }
        let mut pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            // Each acquire would otherwise cost a round trip (halves PostgreSQL tx rates).
            .test_before_acquire(false);
        if dialect == Dialect::Postgres {
            // Connected ahead, not by the first requests (a PostgreSQL connection costs a
            // backend start: it was most of the slowest 1 % of a single-registration run).
            pool = pool.min_connections(max_connections.max(1));
        }
        if dialect == Dialect::Sqlite {
            pool = pool.after_connect(|conn, _meta| {
                Box::pin(async move {
                    for pragma in [
                        "PRAGMA journal_mode = WAL",
                        "PRAGMA synchronous = NORMAL",
                        "PRAGMA busy_timeout = 10000",
                        "PRAGMA foreign_keys = ON",
                        // The server checkpoints in the background (`checkpoint`), off the commit
                        // path. A committing writer checkpoints only past ~400 MB of WAL (a
                        // reader pinning an old snapshot): its checkpoint ends in fsyncs, which
                        // took 40-100 ms here, and every registration waiting for that commit
                        // waited too. At 10,000 pages (~40 MB, under 1 s of sustained single
                        // registrations) that set single-registration p99 on SQLite.
                        "PRAGMA wal_autocheckpoint = 100000",
                    ] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            });
        }
        let pool = pool.connect_with(options).await?;
        Ok(Self {
            pool,
            dialect,
            writer: std::sync::Arc::new(tokio::sync::Mutex::new(())),
            policy_generation: Default::default(),
            group_generation: Default::default(),
            direct: match dialect {
                Dialect::Sqlite => url.sqlite_file().map(|f| direct::DirectReads::new(f).into()),
                Dialect::Postgres => None,
            },
        })
    }

    /// Applies pending migrations for this dialect.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = match self.dialect {
            Dialect::Sqlite => sqlx::migrate!("../migrations/sqlite"),
            Dialect::Postgres => sqlx::migrate!("../migrations/postgres"),
        };
        migrator.run(&self.pool).await.map_err(StoreError::Migrate)
    }

    /// The dialect.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Counts committed policy changes made through this handle; caches of policy rows are
    /// valid only while it is unchanged.
    pub fn policy_generation(&self) -> u64 {
        self.policy_generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Call after committing any change to the `policies` table.
    pub fn policies_changed(&self) {
        self.policy_generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Counts committed enrollment-group changes made through this handle; caches of decoded
    /// groups (`auth::enrollments`) are valid only while it is unchanged.
    pub fn group_generation(&self) -> u64 {
        self.group_generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Call after committing any change to the `enrollment_groups` table.
    pub fn groups_changed(&self) {
        self.group_generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Whether every write comes through this process: SQLite serves one instance (the server
    /// holds a lock file); PostgreSQL may have siblings writing too.
    pub fn single_instance(&self) -> bool {
        self.dialect == Dialect::Sqlite
    }

    /// Begins a write transaction.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(match self.dialect {
            Dialect::Sqlite => {
                let guard = self.writer.clone().lock_owned().await;
                Tx { tx: self.pool.begin_with("BEGIN IMMEDIATE").await?, _writer: Some(guard) }
            }
            Dialect::Postgres => Tx { tx: self.pool.begin().await?, _writer: None },
        })
    }

    /// [`Store::begin`] for a transaction of the large multi-row writes a stream sends again
    /// and again (see [`Writes`]). On PostgreSQL they also run on generic plans, set in the
    /// same round trip as `BEGIN`: left to choose, PostgreSQL kept planning each execution of
    /// the same 250-row insert for its 4,000 parameter values (custom plans) — about a tenth
    /// of its CPU per registration (`scripts/cpu-per-registration`) — although the plan never
    /// changes.
    /// Only here: a generic plan would be wrong for reads whose best index depends on which
    /// parameters are null (`$1 IS NULL OR device_id = $1`).
    pub async fn begin_bulk(&self) -> Result<Tx, StoreError> {
        Ok(match self.dialect {
            Dialect::Sqlite => self.begin().await?,
            Dialect::Postgres => Tx {
                tx: self
                    .pool
                    .begin_with("BEGIN; SET LOCAL plan_cache_mode = force_generic_plan")
                    .await?,
                _writer: None,
            },
        })
    }

    /// Hop-free committed reads (SQLite files only); see [`direct`].
    pub(crate) fn direct(&self) -> Option<&direct::DirectReads> {
        self.direct.as_deref()
    }

    /// A pooled connection for reads.
    pub async fn conn(&self) -> Result<PoolConnection<Any>, StoreError> {
        Ok(self.pool.acquire().await?)
    }

    /// Round trip to the database (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Copies committed WAL pages into the SQLite database file without blocking writers
    /// (`PASSIVE`), so commits do not pay for checkpoints; nothing to do on PostgreSQL.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        if self.dialect == Dialect::Sqlite {
            sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&self.pool).await?;
        }
        Ok(())
    }

    /// SQLite: writes a consistent snapshot of the database to a new file (`VACUUM INTO`, which
    /// runs beside writers). Not for PostgreSQL (back it up with `pg_dump`).
    pub async fn snapshot_to(&self, path: &std::path::Path) -> Result<(), StoreError> {
        if self.dialect != Dialect::Sqlite {
            return Err(StoreError::Unavailable(sqlx::Error::Configuration(
                "a PostgreSQL database is backed up with pg_dump".into(),
            )));
        }
        sqlx::query("VACUUM INTO $1")
            .bind(path.to_string_lossy().into_owned())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Creates an absent SQLite database file empty with mode 0600 (SQLite takes an empty file for a
/// new database), before SQLite would create it 0644: its `-wal` and `-shm` files are created
/// with the database file's mode, so they are private too (API.md A25). Anything else (it
/// exists, the directory is missing) is left for SQLite to report.
fn create_private_database_file(file: &std::path::Path) {
    match crate::fsutil::create_new_private(file) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            tracing::debug!(error = %e, file = %file.display(), "database file not pre-created")
        }
    }
}

/// The dialect of a connection.
pub(crate) fn dialect_of(conn: &sqlx::AnyConnection) -> Dialect {
    if conn.backend_name().eq_ignore_ascii_case("postgresql") {
        Dialect::Postgres
    } else {
        Dialect::Sqlite
    }
}

/// Placeholder number `n` (from 1) for a statement with many parameters: `$n` on PostgreSQL;
/// plain `?` on SQLite, whose lookup of numbered parameter names is linear per parameter
/// (quadratic per statement — most of the cost of a 1,600-value insert).
fn placeholder(dialect: Dialect, n: usize) -> String {
    match dialect {
        Dialect::Postgres => format!("${n}"),
        Dialect::Sqlite => "?".to_owned(),
    }
}

/// A list of `n` placeholders numbered from `first`, bound in order.
pub(crate) fn placeholders(dialect: Dialect, first: usize, n: usize) -> String {
    (first..first + n).map(|i| placeholder(dialect, i)).collect::<Vec<_>>().join(", ")
}

/// Which of `values` appear in `table.column` (one round trip; nothing asked for none).
/// `table` and `column` are this module's constants, never input.
pub(crate) async fn present(
    conn: &mut sqlx::AnyConnection,
    table: &'static str,
    column: &'static str,
    values: &[&str],
) -> Result<std::collections::HashSet<String>, StoreError> {
    if values.is_empty() {
        return Ok(Default::default());
    }
    let sql = format!(
        "SELECT {column} FROM {table} WHERE {column} IN ({})",
        placeholders(dialect_of(conn), 1, values.len())
    );
    let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
    for v in values {
        q = q.bind(*v);
    }
    Ok(q.fetch_all(conn).await?.into_iter().collect())
}

/// Converts a stored 0/1 integer to bool.
pub(crate) fn flag(v: i64) -> bool {
    v != 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholder_lists_number_from_first() {
        use super::Dialect::{Postgres, Sqlite};
        assert_eq!(super::placeholders(Postgres, 4, 3), "$4, $5, $6");
        assert_eq!(super::placeholders(Sqlite, 4, 2), "?, ?");
    }

    #[test]
    fn both_migration_folders_hold_the_same_file_names() {
        let names = |dialect: &str| {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../migrations")
                .join(dialect);
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let sqlite = names("sqlite");
        assert!(!sqlite.is_empty());
        assert_eq!(sqlite, names("postgres"));
    }
}
