//! SQLite end to end: a small shop database made with rusqlite, introspected, queried under limits, and
//! left byte-for-byte unchanged by every statement the check refuses.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde_json::json;
use shoal_sql::{check_reachable, introspect, query, rule, Database, Limits, SqlError};

const ORDERS: i64 = 30;

/// customers ← orders ← order_items (an implicit `REFERENCES orders`, a composite key) and products with a
/// blob; 3 customers, 30 orders.
fn shop() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shop.db");
    let conn = Connection::open(&path).expect("create");
    conn.execute_batch(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT);
         CREATE TABLE orders (
             id INTEGER PRIMARY KEY,
             customer_id INTEGER NOT NULL REFERENCES customers (id),
             total REAL NOT NULL,
             created_at TEXT NOT NULL
         );
         CREATE TABLE products (sku TEXT PRIMARY KEY, photo BLOB);
         CREATE TABLE order_items (
             order_id INTEGER REFERENCES orders,
             sku TEXT REFERENCES products (sku),
             qty INTEGER,
             PRIMARY KEY (order_id, sku)
         );
         CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100;
         INSERT INTO customers (id, name, email) VALUES (1, 'Ada', 'ada@example.com'), (2, 'Linus', NULL),
             (3, 'Grace', 'grace@example.com');
         INSERT INTO products VALUES ('pen', x'0aff'), ('ink', NULL);",
    )
    .expect("schema");
    for i in 1..=ORDERS {
        conn.execute(
            "INSERT INTO orders (id, customer_id, total, created_at) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![i, i % 3 + 1, i as f64 * 10.5, format!("2024-01-{:02}", i % 28 + 1)],
        )
        .expect("order");
    }
    conn.execute("INSERT INTO order_items VALUES (1, 'pen', 2), (1, 'ink', 1)", []).expect("items");
    (dir, path)
}

fn db(path: &Path) -> Database {
    Database::Sqlite { path: path.to_path_buf() }
}

#[tokio::test]
async fn reachability() {
    let (dir, path) = shop();
    check_reachable(&db(&path)).await.expect("a database file");
    let missing = check_reachable(&db(&dir.path().join("missing.db"))).await.expect_err("missing");
    assert!(matches!(missing, SqlError::Unreachable(_)), "{missing:?}");
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "this is not a database, just some words that fill the header page").expect("write");
    let not_db = check_reachable(&db(&text)).await.expect_err("text file");
    assert!(matches!(&not_db, SqlError::Unreachable(m) if m.contains("not a database")), "{not_db:?}");
    assert!(!dir.path().join("missing.db").exists(), "opening read-only never creates the file");
}

#[tokio::test]
async fn introspection_finds_tables_keys_and_samples() {
    let (_dir, path) = shop();
    let schema = introspect(&db(&path), 3).await.expect("introspect");
    assert_eq!(schema.dialect, "SQLite");
    let names: Vec<&str> = schema.tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["big_orders", "customers", "order_items", "orders", "products"]);
    let table = |name: &str| schema.tables.iter().find(|t| t.name == name).expect(name);

    let customers = table("customers");
    assert!(!customers.view && table("big_orders").view);
    let columns: Vec<(&str, &str, bool)> =
        customers.columns.iter().map(|c| (c.name.as_str(), c.data_type.as_str(), c.primary_key)).collect();
    assert_eq!(columns, [("id", "INTEGER", true), ("name", "TEXT", false), ("email", "TEXT", false)]);
    assert_eq!(customers.columns[1].samples.len(), 3);
    assert!(customers.columns[1].samples.contains(&"Ada".to_string()), "{:?}", customers.columns[1].samples);
    assert_eq!(customers.columns[2].samples.len(), 2, "NULL is no sample");

    let orders = table("orders");
    assert_eq!(orders.foreign_keys.len(), 1);
    assert_eq!(orders.foreign_keys[0].columns, ["customer_id"]);
    assert_eq!(orders.foreign_keys[0].ref_table, "customers");
    assert_eq!(orders.foreign_keys[0].ref_columns, ["id"]);
    assert_eq!(orders.columns[0].samples.len(), 3, "capped at samples_per_column");

    let items = table("order_items");
    let primary: Vec<&str> = items.columns.iter().filter(|c| c.primary_key).map(|c| c.name.as_str()).collect();
    assert_eq!(primary, ["order_id", "sku"]);
    let mut keys: Vec<(String, Vec<String>, Vec<String>)> =
        items.foreign_keys.iter().map(|k| (k.ref_table.clone(), k.columns.clone(), k.ref_columns.clone())).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            ("orders".to_string(), vec!["order_id".to_string()], vec!["id".to_string()]),
            ("products".to_string(), vec!["sku".to_string()], vec!["sku".to_string()]),
        ],
        "an implicit REFERENCES orders means its primary key"
    );
    assert_eq!(table("products").columns[1].samples, ["0aff"]);

    let text = schema.prompt_text();
    for needle in [
        "-- SQLite database",
        "CREATE TABLE customers (",
        "  id INTEGER PRIMARY KEY,",
        "  name TEXT, -- e.g. 'Ada', 'Linus', 'Grace'",
        "CREATE TABLE orders (",
        "FOREIGN KEY (customer_id) REFERENCES customers (id)",
        "PRIMARY KEY (order_id, sku)",
        "CREATE VIEW big_orders (",
    ] {
        assert!(text.contains(needle), "prompt lacks {needle:?}:\n{text}");
    }
    let none = introspect(&db(&path), 0).await.expect("introspect without samples");
    assert!(none.tables.iter().flat_map(|t| &t.columns).all(|c| c.samples.is_empty()));
}

#[tokio::test]
async fn queries_run_with_types_and_row_limits() {
    let (_dir, path) = shop();
    let db = db(&path);
    let limits = Limits::default();

    let count = query(&db, "select count(*) as n from orders -- how many?", &limits).await.expect("count");
    assert_eq!(count.sql, "SELECT count(*) AS n FROM orders");
    assert_eq!(count.columns, ["n"]);
    assert_eq!(count.rows, [[json!(ORDERS)]]);
    assert!(!count.truncated);

    let spent = query(
        &db,
        "SELECT c.name, count(*) AS orders, sum(o.total) AS spent FROM customers c \
         JOIN orders o ON o.customer_id = c.id GROUP BY c.name ORDER BY spent DESC",
        &limits,
    )
    .await
    .expect("join");
    assert_eq!(spent.columns, ["name", "orders", "spent"]);
    assert_eq!(spent.rows.len(), 3);
    assert_eq!(spent.rows[0][0], json!("Ada"));
    assert_eq!(spent.rows[0][1], json!(10));

    let values =
        query(&db, "SELECT 1 AS i, 1.5 AS r, 'x' AS t, NULL AS n, x'0aff' AS b", &limits).await.expect("values");
    assert_eq!(values.rows, [[json!(1), json!(1.5), json!("x"), json!(null), json!("0aff")]]);

    let cut = query(&db, "SELECT id FROM orders ORDER BY id", &Limits { max_rows: 10, ..limits }).await.expect("cut");
    assert_eq!(cut.rows.len(), 10);
    assert!(cut.truncated);
    assert_eq!(cut.rows[9], [json!(10)]);
    let exact =
        query(&db, "SELECT id FROM orders", &Limits { max_rows: ORDERS as usize, ..limits }).await.expect("all");
    assert_eq!(exact.rows.len(), ORDERS as usize);
    assert!(!exact.truncated, "exactly max_rows rows is not truncated");

    let missing = query(&db, "SELECT * FROM nowhere", &limits).await.expect_err("no such table");
    assert!(matches!(&missing, SqlError::Query(m) if m.contains("no such table")), "{missing:?}");
}

#[tokio::test]
async fn a_runaway_query_times_out() {
    let (_dir, path) = shop();
    let forever = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n";
    let limits = Limits { max_rows: 10, timeout: Duration::from_millis(200) };
    let started = Instant::now();
    let err = query(&db(&path), forever, &limits).await.expect_err("runs forever");
    assert_eq!(err, SqlError::Timeout(Duration::from_millis(200)));
    assert!(started.elapsed() < Duration::from_secs(5), "stopped late: {:?}", started.elapsed());
}

#[tokio::test]
async fn refused_statements_change_nothing() {
    let (dir, path) = shop();
    let db = db(&path);
    let before = std::fs::read(&path).expect("read");
    let other = dir.path().join("other.db");
    let attach = format!("ATTACH DATABASE '{}' AS other", other.display());
    let cases = [
        ("DROP TABLE orders", rule::NOT_A_QUERY),
        ("DELETE FROM orders", rule::NOT_A_QUERY),
        ("UPDATE orders SET total = 0", rule::NOT_A_QUERY),
        ("INSERT INTO customers (name) VALUES ('Mallory')", rule::NOT_A_QUERY),
        ("CREATE TABLE x (a)", rule::NOT_A_QUERY),
        ("ALTER TABLE orders ADD COLUMN x INT", rule::NOT_A_QUERY),
        ("SELECT 1; DROP TABLE orders", rule::ONE_STATEMENT),
        ("select count(*) from orders; delete from orders", rule::ONE_STATEMENT),
        (attach.as_str(), rule::NOT_A_QUERY),
        ("PRAGMA query_only = 0", rule::NOT_A_QUERY),
        ("PRAGMA writable_schema = 1", rule::NOT_A_QUERY),
        ("SELECT * INTO backup FROM orders", rule::SELECT_INTO),
        ("SELECT writefile('/tmp/shoal-sql-pwned', 'x')", rule::DENIED_FUNCTION),
        ("SELECT load_extension('/tmp/evil')", rule::DENIED_FUNCTION),
        ("SELECT * FROM orders WHERE id IN (SELECT length(readfile('/etc/passwd')))", rule::DENIED_FUNCTION),
        ("VACUUM", rule::NOT_A_QUERY),
    ];
    for (sql, want) in cases {
        let err = query(&db, sql, &Limits::default()).await.expect_err(sql);
        assert_eq!(err.rule(), Some(want), "{sql}: {err}");
        assert_eq!(std::fs::read(&path).expect("read"), before, "{sql} changed the file");
    }
    assert!(!other.exists(), "ATTACH created a file");
    assert!(!Path::new("/tmp/shoal-sql-pwned").exists());
    let count = query(&db, "SELECT count(*) FROM orders", &Limits::default()).await.expect("count");
    assert_eq!(count.rows, [[json!(ORDERS)]]);
}
