//! PostgreSQL end to end against a real server (from `scripts/fetch-pgserver.sh`, as the other PostgreSQL
//! tests: a missing server fails the test, saying how to fetch it): introspection, queries with type
//! mapping, row limits, the statement timeout, refusals that change nothing, and unreachable servers whose
//! errors never show the password.

use std::time::{Duration, Instant};

use serde_json::json;
use shoal_sql::{check_reachable, introspect, query, rule, Database, Limits, SqlError};
use shoal_testkit::free_port;
use shoal_testkit::pg::PgServer;

const SHOP: &str = "
    CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email varchar(100));
    CREATE TABLE orders (
        id integer PRIMARY KEY,
        customer_id integer NOT NULL REFERENCES customers (id),
        total numeric(10, 2) NOT NULL,
        created_at date NOT NULL,
        paid boolean NOT NULL DEFAULT false,
        meta jsonb
    );
    CREATE SCHEMA sales;
    CREATE TABLE sales.targets (year int, region text, amount float8, PRIMARY KEY (year, region));
    CREATE SEQUENCE tickets;
    INSERT INTO customers (name, email) VALUES ('Ada', 'ada@example.com'), ('Linus', NULL), ('Grace', 'g@example.com');
    INSERT INTO orders SELECT i, i % 3 + 1, i * 10.5, date '2024-01-01' + i, i % 2 = 0, jsonb_build_object('n', i)
        FROM generate_series(1, 30) AS i;
    INSERT INTO sales.targets VALUES (2024, 'north', 1.5), (2024, 'south', 2.25);
";

fn count_orders(server: &PgServer) -> String {
    server.psql("SELECT count(*) FROM orders").trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_end_to_end() {
    let server = PgServer::start();
    let setup = server.psql(SHOP);
    assert!(!setup.contains("ERROR"), "{setup}");
    let db = Database::Postgres { url: server.url() };
    check_reachable(&db).await.expect("reachable");
    let limits = Limits::default();

    // Introspection: tables in every user schema, keys, samples.
    let schema = introspect(&db, 3).await.expect("introspect");
    assert_eq!(schema.dialect, "PostgreSQL");
    let names: Vec<String> = schema.tables.iter().map(|t| t.qualified_name()).collect();
    assert_eq!(names, ["customers", "orders", "sales.targets"]);
    let orders = &schema.tables[1];
    let columns: Vec<(&str, &str, bool)> =
        orders.columns.iter().map(|c| (c.name.as_str(), c.data_type.as_str(), c.primary_key)).collect();
    assert_eq!(
        columns,
        [
            ("id", "integer", true),
            ("customer_id", "integer", false),
            ("total", "numeric(10,2)", false),
            ("created_at", "date", false),
            ("paid", "boolean", false),
            ("meta", "jsonb", false),
        ]
    );
    assert_eq!(orders.foreign_keys.len(), 1);
    assert_eq!(orders.foreign_keys[0].columns, ["customer_id"]);
    assert_eq!(orders.foreign_keys[0].ref_table, "customers");
    assert_eq!(orders.foreign_keys[0].ref_columns, ["id"]);
    assert_eq!(orders.columns[0].samples.len(), 3);
    let mut paid = orders.columns[4].samples.clone();
    paid.sort();
    assert_eq!(paid, ["false", "true"]);
    let customers = &schema.tables[0];
    assert!(customers.columns[1].samples.contains(&"Ada".to_string()), "{:?}", customers.columns[1].samples);
    assert_eq!(customers.columns[2].samples.len(), 2, "NULL is no sample");
    let targets = &schema.tables[2];
    assert_eq!(targets.columns.iter().filter(|c| c.primary_key).count(), 2);
    let text = schema.prompt_text();
    for needle in [
        "-- PostgreSQL database",
        "CREATE TABLE orders (",
        "  id integer PRIMARY KEY, -- e.g.",
        "  total numeric(10,2), -- e.g.",
        "FOREIGN KEY (customer_id) REFERENCES customers (id)",
        "CREATE TABLE sales.targets (",
        "PRIMARY KEY (year, region)",
    ] {
        assert!(text.contains(needle), "prompt lacks {needle:?}:\n{text}");
    }

    // A counting query, a join, and values of many types.
    let count = query(&db, "select count(*) as n from orders", &limits).await.expect("count");
    assert_eq!((count.columns.as_slice(), count.rows.as_slice()), (&["n".to_string()][..], &[vec![json!(30)]][..]));
    let per_customer = query(
        &db,
        "SELECT c.name, count(*) AS orders FROM customers c JOIN orders o ON o.customer_id = c.id \
         GROUP BY c.name ORDER BY c.name",
        &limits,
    )
    .await
    .expect("join");
    assert_eq!(
        per_customer.rows,
        [[json!("Ada"), json!(10)], [json!("Grace"), json!(10)], [json!("Linus"), json!(10)]]
    );
    let typed = query(
        &db,
        "SELECT o.id, o.total, o.created_at, o.paid, o.meta, c.email, c.id, 1.5::float4 AS f, 2::int8 AS big, \
         ARRAY[1, 2] AS arr FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = 1",
        &limits,
    )
    .await
    .expect("types");
    assert_eq!(typed.columns, ["id", "total", "created_at", "paid", "meta", "email", "id", "f", "big", "arr"]);
    assert_eq!(
        typed.rows,
        [[
            json!(1),
            json!("10.50"),
            json!("2024-01-02"),
            json!(false),
            json!({"n": 1}),
            json!(null),
            json!(2),
            json!(1.5),
            json!(2),
            json!("{1,2}")
        ]]
    );

    // Row limit.
    let cut = query(&db, "SELECT id FROM orders ORDER BY id", &Limits { max_rows: 7, ..limits }).await.expect("cut");
    assert_eq!(cut.rows.len(), 7);
    assert_eq!(cut.rows[6], [json!(7)]);
    assert!(cut.truncated);
    let all = query(&db, "SELECT id FROM orders", &Limits { max_rows: 30, ..limits }).await.expect("all");
    assert!(all.rows.len() == 30 && !all.truncated);

    // The server stops a heavy query at the statement timeout.
    let heavy = "SELECT count(*) FROM generate_series(1, 100000) a CROSS JOIN generate_series(1, 100000) b";
    let short = Limits { max_rows: 10, timeout: Duration::from_millis(300) };
    let started = Instant::now();
    let err = query(&db, heavy, &short).await.expect_err("heavy");
    assert_eq!(err, SqlError::Timeout(Duration::from_millis(300)));
    assert!(started.elapsed() < Duration::from_secs(10), "stopped late: {:?}", started.elapsed());

    // A database error is an error, with the server's words.
    let missing = query(&db, "SELECT * FROM nowhere", &limits).await.expect_err("missing table");
    assert!(matches!(&missing, SqlError::Query(m) if m.contains("does not exist")), "{missing:?}");

    // Refused statements change nothing.
    for (sql, want) in [
        ("DELETE FROM orders", rule::NOT_A_QUERY),
        ("DROP TABLE orders", rule::NOT_A_QUERY),
        ("SELECT 1; DELETE FROM orders", rule::ONE_STATEMENT),
        ("WITH gone AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM gone", rule::DATA_MODIFYING_CTE),
        ("EXPLAIN ANALYZE WITH gone AS (DELETE FROM orders RETURNING *) SELECT * FROM gone", rule::NOT_A_QUERY),
        ("SELECT * INTO copy FROM orders", rule::SELECT_INTO),
        ("SELECT * FROM orders FOR UPDATE", rule::LOCKING_CLAUSE),
        ("COPY orders TO '/tmp/orders.csv'", rule::NOT_A_QUERY),
        ("SELECT nextval('tickets')", rule::DENIED_FUNCTION),
        ("SELECT pg_catalog.set_config('default_transaction_read_only', 'off', false)", rule::DENIED_FUNCTION),
        ("SELECT * FROM orders WHERE id = (SELECT 1 FROM pg_sleep(5))", rule::DENIED_FUNCTION),
    ] {
        let err = query(&db, sql, &limits).await.expect_err(sql);
        assert_eq!(err.rule(), Some(want), "{sql}: {err}");
        assert_eq!(count_orders(&server), "30", "{sql}");
    }
    assert_eq!(server.psql("SELECT count(*) FROM pg_class WHERE relname = 'copy'").trim(), "0");
    assert_eq!(server.psql("SELECT last_value, is_called FROM tickets").trim(), "1|f");
}

#[tokio::test]
async fn unreachable_servers_are_refused_without_showing_the_password() {
    let port = free_port();
    let db = Database::Postgres { url: format!("postgresql://alice:topsecret@127.0.0.1:{port}/shop") };
    assert_eq!(db.redacted(), format!("postgresql://alice:***@127.0.0.1:{port}/shop"));
    assert!(!format!("{db} {db:?}").contains("topsecret"));
    let err = check_reachable(&db).await.expect_err("closed port");
    let SqlError::Unreachable(message) = &err else { panic!("{err:?}") };
    assert!(!err.to_string().contains("topsecret") && !format!("{err:?}").contains("topsecret"), "{err}");
    assert!(message.contains("alice:***@127.0.0.1"), "{message}");
    let err = query(&db, "SELECT 1", &Limits::default()).await.expect_err("closed port");
    assert!(matches!(&err, SqlError::Unreachable(m) if !m.contains("topsecret")), "{err:?}");
    // The check runs first: a refused statement never even connects.
    let err = query(&db, "DROP TABLE orders", &Limits::default()).await.expect_err("refused");
    assert_eq!(err.rule(), Some(rule::NOT_A_QUERY));
}
