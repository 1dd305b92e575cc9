//! Read-only SQL for Shoal's "LLM + database" question answering: a model writes SQL from a question and a
//! schema; this crate makes sure that SQL only reads, and runs it safely.
//!
//! What it owns:
//! - [`Database`]: a SQLite file or a PostgreSQL URL, shown with its password redacted
//!   ([`Database::redacted`]); [`check_reachable`] refuses one that cannot be opened.
//! - [`introspect`]: tables, columns, types, primary and foreign keys and a few sample values per column,
//!   rendered for a prompt by [`Schema::prompt_text`].
//! - [`check_read_only`]: the statement must parse (with `sqlparser`) as exactly one query with no
//!   data-modifying CTE, no `SELECT INTO`, no locking clause and no call of a denied function; a refusal names
//!   its [`rule`].
//! - [`query`]: checks, then runs the checked statement in a read-only session (SQLite opened read-only with
//!   `query_only`; PostgreSQL in `BEGIN READ ONLY` with a `statement_timeout`, rolled back), capped by
//!   [`Limits`].
//! - [`extract_sql`]: the SQL inside a model's answer (fences, prose).
//!
//! What it must not do: run any text that did not pass the check, hold a connection open between calls,
//! or show a password.

mod check;
mod database;
mod error;
mod extract;
mod postgres;
mod schema;
mod sqlite;

use serde::{Deserialize, Serialize};
use tracing::Instrument;

pub use check::{check_read_only, is_denied_function, rule};
pub use database::{Database, Dialect, Limits, CONNECT_TIMEOUT, DEFAULT_MAX_ROWS, DEFAULT_TIMEOUT, INTROSPECT_TIMEOUT};
pub use error::SqlError;
pub use extract::extract_sql;
pub use schema::{Column, ForeignKey, Schema, Table, SAMPLE_CHARS, SAMPLE_SCAN_ROWS};

/// What a query returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryResult {
    /// The statement that ran: the checked statement in normal form.
    pub sql: String,
    /// Column names, in order.
    pub columns: Vec<String>,
    /// Rows of JSON values, one per column: numbers, strings, booleans, JSON, null. Types without a JSON
    /// form (dates, numerics, UUIDs ...) are the database's text for them; SQLite blobs are hex.
    pub rows: Vec<Vec<serde_json::Value>>,
    /// Whether more rows than [`Limits::max_rows`] existed and were cut off.
    pub truncated: bool,
}

/// Whether `db` can be opened and read: a SQLite file that exists and is a database, or a PostgreSQL
/// server that accepts the URL and answers `SELECT 1`. Fails with [`SqlError::Unreachable`] (password
/// redacted).
pub async fn check_reachable(db: &Database) -> Result<(), SqlError> {
    match db {
        Database::Sqlite { path } => sqlite::check_reachable(path).await,
        Database::Postgres { url } => postgres::check_reachable(db, url).await,
    }
}

/// Reads `db`'s schema, with up to `samples_per_column` distinct sample values per column (0: none).
pub async fn introspect(db: &Database, samples_per_column: usize) -> Result<Schema, SqlError> {
    let span = tracing::info_span!("sql.introspect", db = %db.redacted(), samples_per_column);
    async {
        let schema = match db {
            Database::Sqlite { path } => sqlite::introspect(path, samples_per_column).await,
            Database::Postgres { url } => postgres::introspect(db, url, samples_per_column).await,
        };
        match &schema {
            Ok(schema) => tracing::debug!(tables = schema.tables.len(), "schema read"),
            Err(e) => tracing::debug!(error = %e, "schema not read"),
        }
        schema
    }
    .instrument(span)
    .await
}

/// Checks `sql` with [`check_read_only`] and, when it passes, runs the checked statement on `db` in a
/// read-only session under `limits`.
pub async fn query(db: &Database, sql: &str, limits: &Limits) -> Result<QueryResult, SqlError> {
    let span = tracing::info_span!("sql.query", db = %db.redacted(), max_rows = limits.max_rows);
    async {
        let checked = check_read_only(sql, db).inspect_err(|e| tracing::info!(error = %e, "statement refused"))?;
        let result = match db {
            Database::Sqlite { path } => sqlite::execute(path, &checked, limits).await,
            Database::Postgres { url } => postgres::execute(db, url, &checked, limits).await,
        };
        match &result {
            Ok(result) => tracing::debug!(rows = result.rows.len(), truncated = result.truncated, "query ran"),
            Err(e) => tracing::info!(error = %e, "query failed"),
        }
        result
    }
    .instrument(span)
    .await
}
