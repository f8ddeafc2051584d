//! Writes that reach the database together. A group commit inserts into four tables and moves
//! the audit head; sent one statement at a time, that is five round trips on PostgreSQL, each a
//! wake-up of a server process and of ours — on a loaded machine most of a commit's latency.
//! [`Writes`] collects them and sends them to PostgreSQL as **one** statement: every write but
//! the last becomes a data-modifying `WITH` clause, which PostgreSQL runs atomically (one
//! statement: all or none) and checks constraints at its end. On SQLite (no data-modifying
//! `WITH`, no network) they run one statement each, in order, in the caller's transaction.
//!
//! Rule for callers: the writes of one `Writes` must not depend on each other's effects
//! (PostgreSQL runs them with one snapshot) — insert rows, move a head row; never update or
//! read a row that another of them inserts.

use sqlx::any::AnyArguments;
use sqlx::{Any, AnyConnection, Arguments as _, Encode, Type};

use super::{placeholder, Dialect, StoreError};

/// Statements and their bound values; see the module documentation.
pub struct Writes {
    dialect: Dialect,
    statements: Vec<String>,
    /// PostgreSQL: one list for the one combined statement; SQLite: one list per statement
    args: Vec<AnyArguments>,
    /// values the statements added so far expect in the current list
    expected: usize,
    /// the first statement is a gate the others depend on ([`Writes::gate`])
    gated: bool,
    error: Option<sqlx::Error>,
}

impl std::fmt::Debug for Writes {
    // Bound values may be sealed secrets: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writes")
            .field("dialect", &self.dialect)
            .field("statements", &self.statements.len())
            .finish_non_exhaustive()
    }
}

impl Writes {
    /// Nothing to write yet.
    pub fn new(dialect: Dialect) -> Self {
        Self {
            dialect,
            statements: Vec::new(),
            args: vec![AnyArguments::default()],
            expected: 0,
            gated: false,
            error: None,
        }
    }

    /// PostgreSQL only: makes the writes added after it conditional on `sql`, an `UPDATE …
    /// RETURNING` of at most one row written with `$1 … $n` (bind its values next): if it
    /// matches, they all happen; if not, none does. Send with [`Writes::execute_gated`]. Must be
    /// the first statement.
    pub fn gate(&mut self, sql: &str) -> &mut Self {
        if self.dialect != Dialect::Postgres || !self.statements.is_empty() {
            self.error.get_or_insert(sqlx::Error::InvalidArgument(
                "a gate is the first statement, on PostgreSQL".into(),
            ));
        }
        self.gated = true;
        self.statement(sql)
    }

    /// Adds `INSERT INTO {table} ({columns}) VALUES (…), (…)` for `rows` rows (nothing for
    /// none); bind the values next, row by row in column order.
    pub fn insert(&mut self, table: &str, columns: &str, rows: usize) -> &mut Self {
        if rows == 0 {
            return self;
        }
        let width = columns.split(',').count();
        let first = self.start(width * rows);
        let mut sql = match self.gated {
            true => format!("INSERT INTO {table} ({columns}) SELECT * FROM (VALUES "),
            false => format!("INSERT INTO {table} ({columns}) VALUES "),
        };
        for r in 0..rows {
            sql.push_str(if r == 0 { "(" } else { ", (" });
            for c in 0..width {
                if c > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&placeholder(self.dialect, first + r * width + c));
            }
            sql.push(')');
        }
        if self.gated {
            sql.push_str(") AS v WHERE EXISTS (SELECT 1 FROM w0)");
        }
        self.statements.push(sql);
        self
    }

    /// Adds a statement written with placeholders `$1 … $n`; bind its `n` values next, in order.
    pub fn statement(&mut self, sql: &str) -> &mut Self {
        let (params, _) = renumber(sql, 0);
        let first = self.start(params);
        self.statements.push(renumber(sql, first - 1).1);
        self
    }

    /// Binds the next value of the statement added last.
    pub fn bind<'t, T: Encode<'t, Any> + Type<Any>>(&mut self, value: T) -> &mut Self {
        if let Some(args) = self.args.last_mut() {
            if let Err(e) = args.add(value) {
                self.error.get_or_insert(sqlx::Error::Encode(e));
            }
        }
        self
    }

    /// The dialect the statements are written for.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    /// Sends everything: one statement on PostgreSQL, one per write on SQLite. Call inside a
    /// transaction when there is more than one write on SQLite.
    pub async fn execute(mut self, conn: &mut AnyConnection) -> Result<(), StoreError> {
        self.check_bound();
        if self.gated {
            self.error.get_or_insert(sqlx::Error::InvalidArgument(
                "gated writes are sent with execute_gated".into(),
            ));
        }
        if let Some(e) = self.error {
            return Err(e.into());
        }
        let sql = std::mem::take(&mut self.statements);
        match self.dialect {
            Dialect::Postgres => {
                let (Some(last), Some(args)) = (sql.last(), self.args.pop()) else {
                    return Ok(());
                };
                let mut combined = String::new();
                for (i, s) in sql[..sql.len() - 1].iter().enumerate() {
                    combined.push_str(if i == 0 { "WITH " } else { ", " });
                    combined.push_str(&format!("w{i} AS ({s})"));
                }
                if !combined.is_empty() {
                    combined.push(' ');
                }
                combined.push_str(last);
                sqlx::query_with(sqlx::AssertSqlSafe(combined), args).execute(conn).await?;
            }
            Dialect::Sqlite => {
                for (s, args) in sql.into_iter().zip(self.args) {
                    sqlx::query_with(sqlx::AssertSqlSafe(s), args).execute(&mut *conn).await?;
                }
            }
        }
        Ok(())
    }

    /// Sends gated writes as one statement, outside any transaction (a statement is atomic on
    /// its own, and durable when it returns): true when the gate matched and everything was
    /// written, false when nothing was.
    pub async fn execute_gated(mut self, conn: &mut AnyConnection) -> Result<bool, StoreError> {
        self.check_bound();
        if !self.gated || self.dialect != Dialect::Postgres {
            self.error.get_or_insert(sqlx::Error::InvalidArgument("no gate".into()));
        }
        if let Some(e) = self.error {
            return Err(e.into());
        }
        let Some(args) = self.args.pop() else { return Ok(false) };
        let mut combined = String::new();
        for (i, s) in self.statements.iter().enumerate() {
            combined.push_str(if i == 0 { "WITH " } else { ", " });
            combined.push_str(&format!("w{i} AS ({s})"));
        }
        combined.push_str(" SELECT COUNT(*) FROM w0");
        let matched: i64 =
            sqlx::query_scalar_with(sqlx::AssertSqlSafe(combined), args).fetch_one(conn).await?;
        Ok(matched == 1)
    }

    /// Opens room for a statement of `params` values; returns the number of its first
    /// placeholder.
    fn start(&mut self, params: usize) -> usize {
        self.check_bound();
        if self.dialect == Dialect::Sqlite && !self.statements.is_empty() {
            self.args.push(AnyArguments::default());
            self.expected = 0;
        }
        let first = self.expected + 1;
        self.expected += params;
        first
    }

    /// Records a bug in the caller: a statement bound more or fewer values than it has
    /// placeholders.
    fn check_bound(&mut self) {
        let bound = self.args.last().map_or(0, |a| a.len());
        if bound != self.expected && self.error.is_none() {
            self.error = Some(sqlx::Error::InvalidArgument(format!(
                "statement {} has {} placeholders but {bound} bound values",
                self.statements.len(),
                self.expected
            )));
        }
    }
}

/// Adds `offset` to every `$n` placeholder of `sql`; returns the highest `n` before the shift
/// and the shifted text. (Our statements hold no `$` in literals.)
fn renumber(sql: &str, offset: usize) -> (usize, String) {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut highest = 0;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let mut n = 0usize;
        let mut digits = false;
        while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
            n = n * 10 + d as usize;
            digits = true;
            chars.next();
        }
        if digits {
            highest = highest.max(n);
            out.push_str(&(n + offset).to_string());
        }
    }
    (highest, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_statements_number_into_one_list() {
        let mut w = Writes::new(Dialect::Postgres);
        w.insert("t", "a, b", 2).bind(1i64).bind(2i64).bind(3i64).bind(4i64);
        w.statement("UPDATE h SET x = $1, y = $2 WHERE id = 1").bind(5i64).bind(6i64);
        assert_eq!(w.statements[0], "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)");
        assert_eq!(w.statements[1], "UPDATE h SET x = $5, y = $6 WHERE id = 1");
        w.check_bound();
        assert!(w.error.is_none());
        assert_eq!(w.args.len(), 1);
    }

    #[test]
    fn sqlite_statements_keep_their_own_lists() {
        let mut w = Writes::new(Dialect::Sqlite);
        w.insert("t", "a, b", 1).bind(1i64).bind(2i64);
        w.statement("UPDATE h SET x = $1 WHERE id = 1").bind(3i64);
        assert_eq!(
            w.statements,
            ["INSERT INTO t (a, b) VALUES (?, ?)", "UPDATE h SET x = $1 WHERE id = 1"]
        );
        w.check_bound();
        assert!(w.error.is_none());
        assert_eq!(w.args.len(), 2);
    }

    #[test]
    fn a_missing_or_extra_value_is_an_error_not_a_shifted_statement() {
        let mut w = Writes::new(Dialect::Postgres);
        w.insert("t", "a, b", 1).bind(1i64);
        w.statement("UPDATE h SET x = $1").bind(2i64);
        assert!(matches!(w.error, Some(sqlx::Error::InvalidArgument(_))));
        let mut w = Writes::new(Dialect::Sqlite);
        w.statement("UPDATE h SET x = $1").bind(1i64).bind(2i64);
        w.check_bound();
        assert!(w.error.is_some());
    }

    #[test]
    fn renumbering_shifts_only_placeholders() {
        assert_eq!(
            renumber("a = $1 AND b = $12 AND c = '$'", 3),
            (12, "a = $4 AND b = $15 AND c = '$'".into())
        );
    }
}
