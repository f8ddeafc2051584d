//! Writes that reach the database together. A group commit inserts into four tables and moves
//! the audit head; sent one statement at a time, that is five round trips on PostgreSQL, each a
//! wake-up of a server process and of ours — on a loaded machine most of a commit's latency.
//! [`Writes`] collects them and sends them to PostgreSQL as **one** statement: every write but
//! the last becomes a data-modifying `WITH` clause, which PostgreSQL runs atomically (one
//! statement: all or none) and checks constraints at its end. SQLite has no data-modifying
//! `WITH`; there they go as one multi-statement query, run in order in the caller's
//! transaction — one hop to sqlx's connection thread instead of one per statement.
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
    /// the values of all statements, in placeholder order
    args: AnyArguments,
    /// values the statements added so far expect
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
            args: AnyArguments::default(),
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

    /// Adds a statement written with placeholders `$1 … $n`, each once and in that order; bind
    /// its `n` values next, in order.
    pub fn statement(&mut self, sql: &str) -> &mut Self {
        let params = placeholders_in(sql);
        let first = self.start(params.len());
        if params.iter().enumerate().any(|(i, n)| *n != i + 1) {
            self.error.get_or_insert(sqlx::Error::InvalidArgument(format!(
                "placeholders out of order in `{sql}`"
            )));
        }
        self.statements.push(renumber(sql, |n| placeholder(self.dialect, first + n - 1)));
        self
    }

    /// Binds the next value of the statement added last.
    pub fn bind<'t, T: Encode<'t, Any> + Type<Any>>(&mut self, value: T) -> &mut Self {
        if let Err(e) = self.args.add(value) {
            self.error.get_or_insert(sqlx::Error::Encode(e));
        }
        self
    }

    /// The dialect the statements are written for.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Sends everything: one statement on PostgreSQL, one multi-statement query on SQLite.
    /// Call inside a transaction when there is more than one write on SQLite.
    pub async fn execute(mut self, conn: &mut AnyConnection) -> Result<(), StoreError> {
        self.ready(!self.gated, "gated writes are sent with execute_gated")?;
        let Some((last, init)) = self.statements.split_last() else { return Ok(()) };
        let sql = match self.dialect {
            Dialect::Postgres => with_clauses(init) + last,
            Dialect::Sqlite => self.statements.join(";\n"),
        };
        sqlx::query_with(sqlx::AssertSqlSafe(sql), self.args).execute(conn).await?;
        Ok(())
    }

    /// Sends gated writes as one statement, outside any transaction (a statement is atomic on
    /// its own, and durable when it returns): true when the gate matched and everything was
    /// written, false when nothing was.
    pub async fn execute_gated(mut self, conn: &mut AnyConnection) -> Result<bool, StoreError> {
        self.ready(self.gated && self.dialect == Dialect::Postgres, "no gate")?;
        let sql = with_clauses(&self.statements) + "SELECT COUNT(*) FROM w0";
        let matched: i64 =
            sqlx::query_scalar_with(sqlx::AssertSqlSafe(sql), self.args).fetch_one(conn).await?;
        Ok(matched == 1)
    }

    /// The first error recorded while adding (or `misuse` when `fits` is false), if any.
    fn ready(&mut self, fits: bool, misuse: &str) -> Result<(), StoreError> {
        self.check_bound();
        if !fits {
            self.error.get_or_insert(sqlx::Error::InvalidArgument(misuse.into()));
        }
        match self.error.take() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Opens room for a statement of `params` values; returns the number of its first
    /// placeholder.
    fn start(&mut self, params: usize) -> usize {
        self.check_bound();
        let first = self.expected + 1;
        self.expected += params;
        first
    }

    /// Records a bug in the caller: a statement bound more or fewer values than it has
    /// placeholders.
    fn check_bound(&mut self) {
        let bound = self.args.len();
        if bound != self.expected && self.error.is_none() {
            self.error = Some(sqlx::Error::InvalidArgument(format!(
                "statement {} has {} placeholders but {bound} bound values",
                self.statements.len(),
                self.expected
            )));
        }
    }
}

/// `WITH w0 AS (…), w1 AS (…) ` naming each statement, for a main statement to follow (empty
/// for none).
fn with_clauses(statements: &[String]) -> String {
    let mut sql = String::new();
    for (i, s) in statements.iter().enumerate() {
        sql.push_str(if i == 0 { "WITH " } else { ", " });
        sql.push_str(&format!("w{i} AS ({s})"));
    }
    if !sql.is_empty() {
        sql.push(' ');
    }
    sql
}

/// The numbers of the `$n` placeholders of `sql`, in order of appearance. (Our statements hold
/// no `$` in literals.)
fn placeholders_in(sql: &str) -> Vec<usize> {
    let mut found = Vec::new();
    renumber(sql, |n| {
        found.push(n);
        String::new()
    });
    found
}

/// `sql` with every `$n` placeholder replaced by `to(n)`.
fn renumber(sql: &str, mut to: impl FnMut(usize) -> String) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        let mut n = None;
        while let Some(d) = (c == '$').then(|| chars.peek().and_then(|d| d.to_digit(10))).flatten()
        {
            n = Some(n.unwrap_or(0) * 10 + d as usize);
            chars.next();
        }
        match n {
            Some(n) => out.push_str(&to(n)),
            None => out.push(c),
        }
    }
    out
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
    }

    #[test]
    fn sqlite_statements_take_their_values_in_order() {
        let mut w = Writes::new(Dialect::Sqlite);
        w.insert("t", "a, b", 1).bind(1i64).bind(2i64);
        w.statement("UPDATE h SET x = $1, y = $2 WHERE id = 1").bind(3i64).bind(4i64);
        assert_eq!(
            w.statements,
            ["INSERT INTO t (a, b) VALUES (?, ?)", "UPDATE h SET x = ?, y = ? WHERE id = 1"]
        );
        w.check_bound();
        assert!(w.error.is_none());
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
    fn placeholders_must_come_in_order() {
        let mut w = Writes::new(Dialect::Sqlite);
        w.statement("UPDATE h SET x = $2, y = $1").bind(1i64).bind(2i64);
        assert!(matches!(w.error, Some(sqlx::Error::InvalidArgument(_))));
    }

    #[test]
    fn with_clauses_name_each_statement() {
        assert_eq!(with_clauses(&[]), "");
        let two = ["INSERT INTO a VALUES ($1)".to_owned(), "UPDATE h SET x = $2".to_owned()];
        assert_eq!(
            with_clauses(&two),
            "WITH w0 AS (INSERT INTO a VALUES ($1)), w1 AS (UPDATE h SET x = $2) "
        );
    }

    #[test]
    fn renumbering_shifts_only_placeholders() {
        let shifted = renumber("a = $1 AND b = $12 AND c = '$'", |n| format!("${}", n + 3));
        assert_eq!(shifted, "a = $4 AND b = $15 AND c = '$'");
        assert_eq!(placeholders_in("a = $1 AND b = $12 AND c = '$'"), [1, 12]);
    }
}
