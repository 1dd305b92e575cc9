//! PostgreSQL: every statement runs inside `BEGIN READ ONLY` with `SET LOCAL statement_timeout`, rows are
//! fetched through a portal so no more than the limit (plus one, to see truncation) leave the server, and
//! the transaction is rolled back.

use std::time::Duration;

use serde_json::Value;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, Row, Transaction};

use crate::database::{Database, Dialect, Limits, CONNECT_TIMEOUT, INTROSPECT_TIMEOUT};
use crate::error::SqlError;
use crate::schema::{qualified, quote_ident, Column, ForeignKey, Schema, Table, SAMPLE_SCAN_ROWS};
use crate::QueryResult;

/// How long past the server-side `statement_timeout` the client waits before it gives up on its own.
const CLIENT_GRACE: Duration = Duration::from_secs(1);

/// Tables and views the session may read, outside the system schemas.
const TABLES_SQL: &str = "\
    SELECT c.oid, n.nspname::text, c.relname::text, c.relkind IN ('v', 'm') \
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition \
      AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
      AND pg_catalog.has_any_column_privilege(c.oid, 'SELECT') \
    ORDER BY n.nspname, c.relname";

/// A table's readable columns: name, type as `format_type` spells it, whether in the primary key.
const COLUMNS_SQL: &str = "\
    SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), \
           COALESCE(a.attnum = ANY(i.indkey), false) \
    FROM pg_catalog.pg_attribute a \
    LEFT JOIN pg_catalog.pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
    WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
      AND pg_catalog.has_column_privilege(a.attrelid, a.attnum, 'SELECT') \
    ORDER BY a.attnum";

/// A table's foreign keys: columns, referenced schema and table, referenced columns.
const FOREIGN_KEYS_SQL: &str = "\
    SELECT ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY AS k(num, ord) \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.num ORDER BY k.ord), \
           rn.nspname::text, rc.relname::text, \
           ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY AS k(num, ord) \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.num ORDER BY k.ord) \
    FROM pg_catalog.pg_constraint con \
    JOIN pg_catalog.pg_class rc ON rc.oid = con.confrelid \
    JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace \
    WHERE con.conrelid = $1 AND con.contype = 'f' \
    ORDER BY con.conname";

/// Connects, and spawns the task that drives the connection.
async fn connect(db: &Database, url: &str) -> Result<Client, SqlError> {
    let (client, connection) = match tokio::time::timeout(CONNECT_TIMEOUT, tokio_postgres::connect(url, NoTls)).await {
        Err(_) => {
            return Err(SqlError::Unreachable(format!("{}: no answer within {CONNECT_TIMEOUT:?}", db.redacted())));
        }
        Ok(Err(e)) => return Err(SqlError::Unreachable(db.scrub(&format!("{}: {}", db.redacted(), describe(&e))))),
        Ok(Ok(pair)) => pair,
    };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// A driver error in words: the server's message (with detail and hint) when the server sent one.
fn describe(e: &tokio_postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        return e.to_string();
    };
    let mut text = format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code());
    if let Some(detail) = db.detail() {
        text.push_str("; ");
        text.push_str(detail);
    }
    if let Some(hint) = db.hint() {
        text.push_str("; hint: ");
        text.push_str(hint);
    }
    text
}

/// A driver error while running: a cancelled statement ran out of time.
fn query_error(db: &Database, e: &tokio_postgres::Error, timeout: Duration) -> SqlError {
    if e.code() == Some(&SqlState::QUERY_CANCELED) {
        SqlError::Timeout(timeout)
    } else {
        SqlError::Query(db.scrub(&describe(e)))
    }
}

/// Opens a read-only transaction whose statements stop after `timeout`.
async fn read_only(client: &mut Client, timeout: Duration) -> Result<Transaction<'_>, tokio_postgres::Error> {
    let tx = client.build_transaction().read_only(true).start().await?;
    let millis = timeout.as_millis().clamp(1, i32::MAX as u128);
    tx.batch_execute(&format!("SET LOCAL statement_timeout = {millis}")).await?;
    Ok(tx)
}

/// Connects and reads one row: the database answers.
pub(crate) async fn check_reachable(db: &Database, url: &str) -> Result<(), SqlError> {
    let client = connect(db, url).await?;
    client
        .query_one("SELECT 1", &[])
        .await
        .map(drop)
        .map_err(|e| SqlError::Unreachable(db.scrub(&format!("{}: {}", db.redacted(), describe(&e)))))
}

/// Runs `sql` as given, without the read-only check (callers check first), in a read-only transaction.
pub(crate) async fn execute(db: &Database, url: &str, sql: &str, limits: &Limits) -> Result<QueryResult, SqlError> {
    let mut client = connect(db, url).await?;
    match tokio::time::timeout(limits.timeout + CLIENT_GRACE, run(&mut client, sql, limits)).await {
        Ok(result) => result.map_err(|e| query_error(db, &e, limits.timeout)),
        Err(_) => Err(SqlError::Timeout(limits.timeout)),
    }
}

async fn run(client: &mut Client, sql: &str, limits: &Limits) -> Result<QueryResult, tokio_postgres::Error> {
    let tx = read_only(client, limits.timeout).await?;
    let statement = tx.prepare(sql).await?;
    let columns: Vec<String> = statement.columns().iter().map(|c| c.name().to_string()).collect();
    let types: Vec<Type> = statement.columns().iter().map(|c| c.type_().clone()).collect();
    // Types without a JSON mapping here come back as the server's text for them.
    let statement =
        if types.iter().all(is_native) { statement } else { tx.prepare(&with_text_columns(sql, &types)).await? };
    let portal = tx.bind(&statement, &[]).await?;
    let fetch = i32::try_from(limits.max_rows.saturating_add(1)).unwrap_or(i32::MAX);
    let fetched = tx.query_portal(&portal, fetch).await?;
    tx.rollback().await?;
    let truncated = fetched.len() > limits.max_rows;
    let rows = fetched.iter().take(limits.max_rows).map(json_row).collect::<Result<Vec<_>, _>>()?;
    Ok(QueryResult { sql: sql.to_string(), columns, rows, truncated })
}

/// The query wrapped so that every column of a type [`is_native`] does not know is cast to `text`. Columns
/// are renamed by position (`c1`, `c2` ...) so duplicate or odd names in the query do not matter.
fn with_text_columns(sql: &str, types: &[Type]) -> String {
    let names: Vec<String> = (1..=types.len()).map(|i| format!("c{i}")).collect();
    let select: Vec<String> = names
        .iter()
        .zip(types)
        .map(|(name, ty)| if is_native(ty) { name.clone() } else { format!("{name}::text") })
        .collect();
    format!("SELECT {} FROM ({sql}) AS shoal_query ({})", select.join(", "), names.join(", "))
}

/// Types read straight into JSON; the rest are read as text.
fn is_native(ty: &Type) -> bool {
    [
        Type::BOOL,
        Type::INT2,
        Type::INT4,
        Type::INT8,
        Type::OID,
        Type::FLOAT4,
        Type::FLOAT8,
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
        Type::JSON,
        Type::JSONB,
    ]
    .contains(ty)
}

fn json_row(row: &Row) -> Result<Vec<Value>, tokio_postgres::Error> {
    (0..row.len()).map(|i| json_cell(row, i)).collect()
}

/// One value as JSON: booleans and integers as themselves, floats as numbers (non-finite ones as text),
/// JSON as JSON, everything else as text, NULL as null.
fn json_cell(row: &Row, i: usize) -> Result<Value, tokio_postgres::Error> {
    fn or_null<T: Into<Value>>(value: Option<T>) -> Value {
        value.map_or(Value::Null, Into::into)
    }
    fn float(value: Option<f64>) -> Value {
        value.map_or(Value::Null, |f| {
            serde_json::Number::from_f64(f).map_or_else(|| Value::String(f.to_string()), Value::Number)
        })
    }
    let ty = row.columns()[i].type_();
    Ok(if *ty == Type::BOOL {
        or_null(row.try_get::<_, Option<bool>>(i)?)
    } else if *ty == Type::INT2 {
        or_null(row.try_get::<_, Option<i16>>(i)?)
    } else if *ty == Type::INT4 {
        or_null(row.try_get::<_, Option<i32>>(i)?)
    } else if *ty == Type::INT8 {
        or_null(row.try_get::<_, Option<i64>>(i)?)
    } else if *ty == Type::OID {
        or_null(row.try_get::<_, Option<u32>>(i)?)
    } else if *ty == Type::FLOAT4 {
        // Through its shortest decimal form, so 1.1 stays 1.1 rather than 1.100000023841858.
        float(row.try_get::<_, Option<f32>>(i)?.map(|f| f.to_string().parse().unwrap_or(f64::from(f))))
    } else if *ty == Type::FLOAT8 {
        float(row.try_get::<_, Option<f64>>(i)?)
    } else if *ty == Type::JSON || *ty == Type::JSONB {
        row.try_get::<_, Option<Value>>(i)?.unwrap_or(Value::Null)
    } else {
        or_null(row.try_get::<_, Option<String>>(i)?)
    })
}

/// The tables and views with their columns, keys and `samples` values per column.
pub(crate) async fn introspect(db: &Database, url: &str, samples: usize) -> Result<Schema, SqlError> {
    let mut client = connect(db, url).await?;
    match tokio::time::timeout(INTROSPECT_TIMEOUT + CLIENT_GRACE, read_schema(&mut client, samples)).await {
        Ok(result) => result.map_err(|e| query_error(db, &e, INTROSPECT_TIMEOUT)),
        Err(_) => Err(SqlError::Timeout(INTROSPECT_TIMEOUT)),
    }
}

async fn read_schema(client: &mut Client, samples: usize) -> Result<Schema, tokio_postgres::Error> {
    let tx = read_only(client, INTROSPECT_TIMEOUT).await?;
    let mut tables = Vec::new();
    for row in tx.query(TABLES_SQL, &[]).await? {
        let oid: u32 = row.try_get(0)?;
        let schema: String = row.try_get(1)?;
        let name: String = row.try_get(2)?;
        let mut columns = Vec::new();
        for column in tx.query(COLUMNS_SQL, &[&oid]).await? {
            let column_name: String = column.try_get(0)?;
            let samples = if samples == 0 {
                Vec::new()
            } else {
                read_samples(&tx, &schema, &name, &column_name, samples).await?
            };
            columns.push(Column {
                name: column_name,
                data_type: column.try_get(1)?,
                primary_key: column.try_get(2)?,
                samples,
            });
        }
        let mut foreign_keys = Vec::new();
        for key in tx.query(FOREIGN_KEYS_SQL, &[&oid]).await? {
            let ref_schema: String = key.try_get(1)?;
            let ref_name: String = key.try_get(2)?;
            foreign_keys.push(ForeignKey {
                columns: key.try_get(0)?,
                ref_table: qualified(Some(&ref_schema), &ref_name),
                ref_columns: key.try_get(3)?,
            });
        }
        tables.push(Table { schema: Some(schema), name, view: row.try_get(3)?, columns, foreign_keys });
    }
    tx.rollback().await?;
    Ok(Schema { dialect: Dialect::Postgres.name().to_string(), tables })
}

/// Up to `count` distinct non-null values of a column as text, from its first [`SAMPLE_SCAN_ROWS`] rows.
async fn read_samples(
    tx: &Transaction<'_>,
    schema: &str,
    table: &str,
    column: &str,
    count: usize,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let column = quote_ident(column);
    let sql = format!(
        "SELECT DISTINCT v FROM (SELECT {column}::text AS v FROM {}.{} WHERE {column} IS NOT NULL \
         LIMIT {SAMPLE_SCAN_ROWS}) AS s LIMIT {count}",
        quote_ident(schema),
        quote_ident(table)
    );
    tx.query(&sql, &[]).await?.iter().map(|row| row.try_get(0)).collect()
}

#[cfg(test)]
mod tests {
    use shoal_testkit::pg::PgServer;

    use super::*;

    /// Even a write the checker never saw cannot change anything: the transaction itself is read-only,
    /// and the extended protocol takes one statement only.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn executor_refuses_writes_that_bypass_the_checker() {
        let server = PgServer::start();
        let setup = server.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1); CREATE SEQUENCE s;");
        assert!(!setup.contains("ERROR"), "{setup}");
        let url = server.url();
        let db = Database::Postgres { url: url.clone() };
        for write in [
            "INSERT INTO t VALUES (2)",
            "UPDATE t SET id = 3",
            "DELETE FROM t",
            "DROP TABLE t",
            "CREATE TABLE u (a int)",
            "SELECT nextval('s')",
            "WITH gone AS (DELETE FROM t RETURNING *) SELECT * FROM gone",
        ] {
            let err = execute(&db, &url, write, &Limits::default()).await.expect_err(write);
            let SqlError::Query(message) = &err else { panic!("{write}: {err:?}") };
            assert!(message.contains("read-only transaction"), "{write}: {message}");
        }
        // Stacking a COMMIT to leave the read-only transaction is not even one statement to the server.
        let err = execute(&db, &url, "COMMIT; DROP TABLE t", &Limits::default()).await.expect_err("stacked");
        assert!(matches!(&err, SqlError::Query(m) if m.contains("multiple commands")), "{err:?}");
        assert_eq!(server.psql("SELECT count(*) FROM t WHERE id = 1").trim(), "1");
        assert_eq!(server.psql("SELECT is_called FROM s").trim(), "f");
    }
}
