//! SQLite: the file is opened read-only (`SQLITE_OPEN_READ_ONLY`, then `PRAGMA query_only = ON`), a
//! progress handler stops a statement at its deadline, and all work runs on tokio's blocking pool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use serde_json::Value;

use crate::database::{Dialect, Limits, INTROSPECT_TIMEOUT};
use crate::error::SqlError;
use crate::schema::{quote_ident, Column, ForeignKey, Schema, Table, SAMPLE_SCAN_ROWS};
use crate::QueryResult;

/// Virtual machine steps between two looks at the deadline.
const PROGRESS_STEPS: i32 = 1_000;

/// Opens the file read-only and proves it is a database by reading `sqlite_master`.
fn open(path: &Path) -> Result<Connection, SqlError> {
    if !path.is_file() {
        return Err(SqlError::Unreachable(format!("no SQLite database file at {}", path.display())));
    }
    let unreachable = |e: rusqlite::Error| SqlError::Unreachable(format!("{}: {e}", path.display()));
    // No SQLITE_OPEN_URI: a path is a path, never `file:...?mode=rw`.
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(unreachable)?;
    conn.execute_batch("PRAGMA query_only = ON; PRAGMA trusted_schema = OFF;").map_err(unreachable)?;
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get::<_, i64>(0)).map_err(unreachable)?;
    Ok(conn)
}

/// Makes every statement on `conn` stop once `timeout` has passed from now.
fn set_deadline(conn: &mut Connection, timeout: Duration) -> Result<(), SqlError> {
    let deadline = Instant::now() + timeout;
    conn.progress_handler(PROGRESS_STEPS, Some(move || Instant::now() >= deadline))
        .map_err(|e| SqlError::Query(e.to_string()))
}

/// A SQLite error as this crate's error: an interrupted statement ran out of time.
fn query_error(e: rusqlite::Error, timeout: Duration) -> SqlError {
    match e.sqlite_error_code() {
        Some(ErrorCode::OperationInterrupted) => SqlError::Timeout(timeout),
        _ => SqlError::Query(e.to_string()),
    }
}

/// Runs blocking SQLite work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SqlError> + Send + 'static,
) -> Result<T, SqlError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| SqlError::Query(format!("the SQLite task failed: {e}")))?
}

/// Whether the file exists and is a SQLite database this process can read.
pub(crate) async fn check_reachable(path: &Path) -> Result<(), SqlError> {
    let path = path.to_path_buf();
    blocking(move || open(&path).map(drop)).await
}

/// Runs `sql` as given, without the read-only check (callers check first), on a read-only connection.
pub(crate) async fn execute(path: &Path, sql: &str, limits: &Limits) -> Result<QueryResult, SqlError> {
    let (path, sql, limits) = (path.to_path_buf(), sql.to_string(), *limits);
    blocking(move || {
        let mut conn = open(&path)?;
        set_deadline(&mut conn, limits.timeout)?;
        run(&conn, &sql, &limits).map_err(|e| query_error(e, limits.timeout))
    })
    .await
}

/// Steps the statement, keeping at most `max_rows` rows.
fn run(conn: &Connection, sql: &str, limits: &Limits) -> rusqlite::Result<QueryResult> {
    let mut statement = conn.prepare(sql)?;
    let columns: Vec<String> = statement.column_names().map(str::to_string).collect();
    let width = columns.len();
    let mut rows = statement.query([])?;
    let mut out = Vec::new();
    let mut truncated = false;
    while let Some(row) = rows.next()? {
        if out.len() == limits.max_rows {
            truncated = true;
            break;
        }
        out.push((0..width).map(|i| row.get_ref(i).map(json_value)).collect::<rusqlite::Result<Vec<_>>>()?);
    }
    Ok(QueryResult { sql: sql.to_string(), columns, rows: out, truncated })
}

/// A SQLite value as JSON: integers and reals as numbers (a non-finite real as text), text as a string,
/// a blob as a lower-case hex string, NULL as null.
fn json_value(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::from(i),
        ValueRef::Real(f) => {
            serde_json::Number::from_f64(f).map_or_else(|| Value::String(f.to_string()), Value::Number)
        }
        ValueRef::Text(bytes) => Value::String(String::from_utf8_lossy(bytes).into_owned()),
        ValueRef::Blob(bytes) => Value::String(hex(bytes)),
    }
}

/// A SQLite value as sample text.
fn sample_text(value: ValueRef<'_>) -> Option<String> {
    match value {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        ValueRef::Blob(bytes) => Some(hex(bytes)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The tables and views with their columns, keys and `samples` values per column.
pub(crate) async fn introspect(path: &Path, samples: usize) -> Result<Schema, SqlError> {
    let path: PathBuf = path.to_path_buf();
    blocking(move || {
        let mut conn = open(&path)?;
        set_deadline(&mut conn, INTROSPECT_TIMEOUT)?;
        read_schema(&conn, samples).map_err(|e| query_error(e, INTROSPECT_TIMEOUT))
    })
    .await
}

fn read_schema(conn: &Connection, samples: usize) -> rusqlite::Result<Schema> {
    let mut list = conn.prepare(
        "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view') \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
    )?;
    let names = list
        .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)? == "view")))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut tables = Vec::with_capacity(names.len());
    for (name, view) in names {
        let columns = read_columns(conn, &name, samples)?;
        let foreign_keys = read_foreign_keys(conn, &name)?;
        tables.push(Table { schema: None, name, view, columns, foreign_keys });
    }
    resolve_implicit_references(&mut tables);
    Ok(Schema { dialect: Dialect::Sqlite.name().to_string(), tables })
}

fn read_columns(conn: &Connection, table: &str, samples: usize) -> rusqlite::Result<Vec<Column>> {
    let mut info = conn.prepare("SELECT name, type, pk FROM pragma_table_info(?1) ORDER BY cid")?;
    let columns = info
        .query_map([table], |row| {
            Ok(Column {
                name: row.get(0)?,
                data_type: row.get(1)?,
                primary_key: row.get::<_, i64>(2)? > 0,
                samples: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if samples == 0 {
        return Ok(columns);
    }
    columns
        .into_iter()
        .map(|mut column| {
            column.samples = read_samples(conn, table, &column.name, samples)?;
            Ok(column)
        })
        .collect()
}

/// Up to `count` distinct non-null values of a column, from its first [`SAMPLE_SCAN_ROWS`] rows. A column
/// that cannot be read (a broken view) has none; running out of time is an error.
fn read_samples(conn: &Connection, table: &str, column: &str, count: usize) -> rusqlite::Result<Vec<String>> {
    let column = quote_ident(column);
    let sql = format!(
        "SELECT DISTINCT v FROM (SELECT {column} AS v FROM {} WHERE {column} IS NOT NULL LIMIT {SAMPLE_SCAN_ROWS}) \
         LIMIT {count}",
        quote_ident(table)
    );
    let read = || -> rusqlite::Result<Vec<String>> {
        let mut statement = conn.prepare(&sql)?;
        let mut rows = statement.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.extend(sample_text(row.get_ref(0)?));
        }
        Ok(out)
    };
    match read() {
        Err(e) if e.sqlite_error_code() == Some(ErrorCode::OperationInterrupted) => Err(e),
        Err(e) => {
            tracing::debug!(table, %column, error = %e, "no samples");
            Ok(Vec::new())
        }
        ok => ok,
    }
}

fn read_foreign_keys(conn: &Connection, table: &str) -> rusqlite::Result<Vec<ForeignKey>> {
    let mut list =
        conn.prepare(r#"SELECT id, "table", "from", "to" FROM pragma_foreign_key_list(?1) ORDER BY id, seq"#)?;
    let parts = list
        .query_map([table], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<String>>(3)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut keys: BTreeMap<i64, ForeignKey> = BTreeMap::new();
    for (id, ref_table, from, to) in parts {
        let key =
            keys.entry(id).or_insert_with(|| ForeignKey { columns: Vec::new(), ref_table, ref_columns: Vec::new() });
        key.columns.push(from);
        // `REFERENCES parent` without columns means the parent's primary key: filled in later.
        key.ref_columns.extend(to);
    }
    Ok(keys.into_values().collect())
}

/// Fills in the referenced columns of keys declared as `REFERENCES parent` (the parent's primary key).
fn resolve_implicit_references(tables: &mut [Table]) {
    let primary_keys: BTreeMap<String, Vec<String>> = tables
        .iter()
        .map(|t| {
            let key = t.columns.iter().filter(|c| c.primary_key).map(|c| c.name.clone()).collect();
            (t.name.to_lowercase(), key)
        })
        .collect();
    for key in tables.iter_mut().flat_map(|t| t.foreign_keys.iter_mut()) {
        if key.ref_columns.is_empty() {
            key.ref_columns = primary_keys.get(&key.ref_table.to_lowercase()).cloned().unwrap_or_default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shop() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("shop.db");
        let conn = Connection::open(&path).expect("create");
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t (v) VALUES ('a');")
            .expect("fill");
        (dir, path)
    }

    fn count(path: &Path) -> i64 {
        Connection::open(path).expect("open").query_row("SELECT count(*) FROM t", [], |r| r.get(0)).expect("count")
    }

    /// Even a write the checker never saw cannot change the file: the connection itself is read-only.
    #[tokio::test]
    async fn executor_refuses_writes_that_bypass_the_checker() {
        let (_dir, path) = shop();
        let limits = Limits::default();
        for write in [
            "INSERT INTO t (v) VALUES ('b')",
            "UPDATE t SET v = 'c'",
            "DELETE FROM t",
            "DROP TABLE t",
            "CREATE TEMP TABLE x (a)",
        ] {
            let err = execute(&path, write, &limits).await.expect_err(write);
            let SqlError::Query(message) = &err else { panic!("{write}: {err:?}") };
            assert!(message.contains("readonly") || message.contains("read-only"), "{write}: {message}");
        }
        // Without the query_only pragma, the open flags alone still refuse a write.
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open");
        let err = conn.execute("INSERT INTO t (v) VALUES ('d')", []).expect_err("read-only open");
        assert_eq!(err.sqlite_error_code(), Some(ErrorCode::ReadOnly), "{err}");
        assert_eq!(count(&path), 1);
    }

    #[tokio::test]
    async fn executor_refuses_stacked_statements() {
        let (_dir, path) = shop();
        let err = execute(&path, "SELECT 1; DELETE FROM t", &Limits::default()).await.expect_err("stacked");
        assert!(matches!(err, SqlError::Query(_)), "{err:?}");
        assert_eq!(count(&path), 1);
    }
}
