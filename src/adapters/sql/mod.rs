//! What the two SQL stores share, written once: MySQL/MariaDB in `mysql/`, SQLite (the
//! embedded mode) in `sqlite/`. Both speak `?` placeholders, so a statement is its text and
//! its arguments in order ([`Sql`]); a [`Dialect`] says the little that differs (how an
//! instant is stored and what "now" is, the `LIKE` escape, the columns one store has and the
//! other lacks). Each store binds the arguments with its own types and runs the statements
//! in its own transactions; rows are read back through [`Columns`].
//!
//! - [`dlq`]: the dead-letter queue's statements, and a dead letter read from its row.
//! - [`records`]: the request listing, the workers' records (processed events, attempt
//!   logs) and the health rows.
//! - [`retention`]: deleting rows past their retention, in bounded batches.
//! - [`rows`]: small helpers on what was read (duplicate keys, payloads, histories).
//! - [`Shared`]: the dead-letter queue, health rows and records on either store, run
//!   through its [`Backend`] (`MySql` or `Sqlite`, implemented in their folders).
//!
//! A query that both stores run is changed here, once.

pub(crate) mod dlq;
pub(crate) mod records;
pub(crate) mod replay;
pub(crate) mod retention;
pub(crate) mod rows;
mod store;

pub(crate) use store::Inserted;
pub use store::Shared;

use actors::StoreError;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

/// The SQL dialect a statement is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// MySQL or MariaDB: instants are `DATETIME(6)`/`TIMESTAMP(6)`, "now" is `NOW(6)`.
    Mysql,
    /// SQLite: instants are microseconds since the epoch, "now" is bound by the daemon.
    Sqlite,
}

/// One argument of a statement, bound by the store that runs it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arg {
    /// Text (NULL when None).
    Text(Option<String>),
    /// A whole number (NULL when None).
    Int(Option<i64>),
    /// An instant (NULL when None): a `DATETIME` in MySQL, microseconds in SQLite.
    Time(Option<DateTime<Utc>>),
}

impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(Some(v.to_string()))
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(Some(v))
    }
}
impl From<&String> for Arg {
    fn from(v: &String) -> Self {
        Arg::Text(Some(v.clone()))
    }
}
impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Self {
        Arg::Text(v.map(String::from))
    }
}
impl From<&Option<String>> for Arg {
    fn from(v: &Option<String>) -> Self {
        Arg::Text(v.clone())
    }
}
impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}
impl From<u32> for Arg {
    fn from(v: u32) -> Self {
        Arg::Int(Some(v.into()))
    }
}
impl From<DateTime<Utc>> for Arg {
    fn from(v: DateTime<Utc>) -> Self {
        Arg::Time(Some(v))
    }
}

/// A statement: its text with `?` placeholders and their arguments in order.
#[derive(Debug, Clone)]
pub(crate) struct Sql {
    dialect: Dialect,
    text: String,
    args: Vec<Arg>,
    /// The instant `now()` stands for in SQLite: one per statement, like MySQL's `NOW(6)`.
    now: DateTime<Utc>,
}

impl Sql {
    /// A statement starting with `text`.
    pub(crate) fn new(dialect: Dialect, text: &str) -> Self {
        let now = Utc::now();
        Self {
            dialect,
            text: text.to_string(),
            args: Vec::new(),
            // Microseconds, as both stores keep them.
            now: DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now),
        }
    }

    /// Appends text.
    pub(crate) fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder for `arg`.
    pub(crate) fn bind(&mut self, arg: impl Into<Arg>) -> &mut Self {
        self.text.push('?');
        self.args.push(arg.into());
        self
    }

    /// Appends "now": `NOW(6)` in MySQL, the statement's instant bound in SQLite.
    pub(crate) fn now(&mut self) -> &mut Self {
        match self.dialect {
            Dialect::Mysql => self.push("NOW(6)"),
            Dialect::Sqlite => {
                let now = self.now;
                self.bind(now)
            }
        }
    }

    /// Appends `(?, ?, …)` for `items`.
    pub(crate) fn list<T: Into<Arg>>(&mut self, items: impl IntoIterator<Item = T>) -> &mut Self {
        self.text.push('(');
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.bind(item);
        }
        self.push(")")
    }

    /// The text, with `?` placeholders.
    #[cfg(test)]
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// The arguments, in the order of the placeholders.
    #[cfg(test)]
    pub(crate) fn args(&self) -> &[Arg] {
        &self.args
    }
}

/// How a store's driver keeps instants and what its errors mean for the caller.
pub trait Driver: sqlx::Database {
    /// An instant, or NULL, as stored.
    type Time: for<'q> sqlx::Encode<'q, Self> + sqlx::Type<Self> + Send + 'static;
    /// `at` as stored.
    fn store_time(at: Option<DateTime<Utc>>) -> Self::Time;
    /// The instant in column `name` of `row` (None when NULL).
    fn read_time(row: &Self::Row, name: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error>;
    /// A driver error as the ports see it (worth retrying, or refused).
    fn error(err: sqlx::Error) -> StoreError;
}

/// What else differs between the stores: the dialect, how a transaction starts, what an
/// insert or update reports. `MySql` and `Sqlite` implement it (in `mysql/` and `sqlite/`).
pub trait Backend: Driver<Row: Columns> {
    /// The dialect its statements are written in.
    const DIALECT: Dialect;
    /// The id the insert that reported `done` made.
    fn last_insert_id(done: &Self::QueryResult) -> i64;
    /// The rows `done` changed.
    fn rows_affected(done: &Self::QueryResult) -> u64;
    /// A transaction on `pool`.
    fn begin(
        pool: &sqlx::Pool<Self>,
    ) -> BoxFuture<'_, Result<sqlx::Transaction<'static, Self>, StoreError>>;
}

/// What running a statement did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Done {
    /// Rows changed.
    pub(crate) rows: u64,
    /// The id an insert made.
    pub(crate) last_id: i64,
}

impl Sql {
    /// The statement ready to run on `DB`, its arguments bound.
    pub(crate) fn query<DB: Driver>(&self) -> sqlx::query::Query<'_, DB, DB::Arguments<'_>>
    where
        Option<String>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        Option<i64>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    {
        self.args
            .iter()
            .fold(sqlx::query::<DB>(&self.text), |q, arg| match arg {
                Arg::Text(v) => q.bind(v.clone()),
                Arg::Int(v) => q.bind(*v),
                Arg::Time(v) => q.bind(DB::store_time(*v)),
            })
    }
}

/// A row read back, column by column, whatever the store.
pub trait Columns {
    /// A text column (None when NULL).
    fn text(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// An integer column (None when NULL).
    fn int(&self, name: &str) -> Result<Option<i64>, StoreError>;
    /// An instant column (None when NULL).
    fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// A text column that is never NULL.
    fn required_text(&self, name: &str) -> Result<String, StoreError> {
        self.text(name)?
            .ok_or_else(|| StoreError::Rejected(format!("{name} is NULL")))
    }

    /// An integer column that is never NULL.
    fn required_int(&self, name: &str) -> Result<i64, StoreError> {
        self.int(name)?
            .ok_or_else(|| StoreError::Rejected(format!("{name} is NULL")))
    }

    /// A count (never negative; NULL reads as 0).
    fn count(&self, name: &str) -> Result<u32, StoreError> {
        Ok(u32::try_from(self.int(name)?.unwrap_or(0)).unwrap_or(0))
    }
}

impl<R> Columns for R
where
    R: sqlx::Row,
    R::Database: Driver,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    fn text(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.try_get(name).map_err(R::Database::error)
    }

    fn int(&self, name: &str) -> Result<Option<i64>, StoreError> {
        self.try_get(name).map_err(R::Database::error)
    }

    fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        R::Database::read_time(self, name).map_err(R::Database::error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_sql_in_mysql_and_an_argument_in_sqlite() {
        let mut m = Sql::new(Dialect::Mysql, "UPDATE t SET at = ");
        m.now().push(" WHERE id = ").bind(7_i64);
        assert_eq!(m.text(), "UPDATE t SET at = NOW(6) WHERE id = ?");
        assert_eq!(m.args(), &[Arg::Int(Some(7))]);

        let mut s = Sql::new(Dialect::Sqlite, "UPDATE t SET at = ");
        s.now().push(" WHERE id = ").bind(7_i64);
        assert_eq!(s.text(), "UPDATE t SET at = ? WHERE id = ?");
        assert!(matches!(s.args()[0], Arg::Time(Some(_))));
        assert_eq!(s.args()[1], Arg::Int(Some(7)));
    }

    #[test]
    fn lists_have_one_placeholder_per_item() {
        let mut q = Sql::new(Dialect::Sqlite, "x IN ");
        q.list(["a", "b", "c"]);
        assert_eq!(q.text(), "x IN (?, ?, ?)");
        assert_eq!(q.args().len(), 3);
        let mut empty = Sql::new(Dialect::Mysql, "");
        empty.list(Vec::<i64>::new());
        assert_eq!(empty.text(), "()");
    }
}
