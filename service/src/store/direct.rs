//! Committed single-row reads on SQLite without a thread hop.
//!
//! sqlx runs every SQLite connection on a thread of its own, so each statement costs two
//! cross-thread wake-ups; on the hot read paths (a device for `/v1/sas/verify`, a group for a
//! registration) they cost more than the read itself. These paths read through a few plain
//! connections on the calling thread instead: a primary-key lookup in a WAL database takes
//! microseconds and never waits for the writer (WAL readers do not block). This is not a cache:
//! every read starts a fresh read transaction and sees the latest commit of any process, exactly
//! as the sqlx path does. Any failure (busy, I/O, a missing file) answers `None` and the caller
//! takes the sqlx path, which reports the error properly.

use std::path::PathBuf;
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags};

/// Idle connections kept for reuse (one per busy worker thread is enough).
const MAX_IDLE: usize = 8;

/// Statements kept prepared per connection.
const STATEMENT_CACHE: usize = 16;

/// A small pool of read-only connections to one SQLite file.
pub struct DirectReads {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for DirectReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectReads").field("path", &self.path).finish_non_exhaustive()
    }
}

impl DirectReads {
    /// Reads of the database file at `path` (opened on first use, never created).
    pub fn new(path: PathBuf) -> Self {
        Self { path, idle: Mutex::new(Vec::new()) }
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Never writes; never sleeps in the busy handler (the sqlx path waits instead).
        conn.execute_batch("PRAGMA query_only = 1; PRAGMA busy_timeout = 0;")?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }

    /// Runs `read` on an idle connection; `None` when it fails for any reason.
    fn read<T>(&self, read: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Option<T> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let conn = match idle {
            Some(conn) => conn,
            None => match self.open() {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::debug!(error = %e, "direct SQLite read unavailable");
                    return None;
                }
            },
        };
        match read(&conn) {
            Ok(v) => {
                if let Ok(mut idle) = self.idle.lock() {
                    if idle.len() < MAX_IDLE {
                        idle.push(conn);
                    }
                }
                Some(v)
            }
            Err(e) => {
                tracing::debug!(error = %e, "direct SQLite read failed; using the pool");
                None
            }
        }
    }

    /// The row `sql` selects (at most one), decoded by `decode`; `None` when the read failed.
    pub fn row<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        decode: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Option<Option<T>> {
        use rusqlite::OptionalExtension as _;
        self.read(|c| c.prepare_cached(sql)?.query_row(params, decode).optional())
    }

    /// Every row `sql` selects, decoded by `decode`; `None` when the read failed.
    pub fn rows<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        decode: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Option<Vec<T>> {
        self.read(|c| c.prepare_cached(sql)?.query_map(params, decode)?.collect())
    }
}
