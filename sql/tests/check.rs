//! The read-only check against the bypasses a model (or a prompt injection) could write, in both dialects,
//! and the ordinary analytical queries it must let through.

use std::path::PathBuf;

use shoal_sql::{check_read_only, rule, Database, SqlError};

fn sqlite() -> Database {
    Database::Sqlite { path: PathBuf::from("/nonexistent/shop.db") }
}

fn postgres() -> Database {
    Database::Postgres { url: "postgresql://u:pw@127.0.0.1:1/shop".into() }
}

fn both() -> [Database; 2] {
    [sqlite(), postgres()]
}

/// Asserts `sql` is refused on `db` under `rule`, with a message that mentions `names` (any case).
#[track_caller]
fn refused(db: &Database, sql: &str, want: &str, names: &str) {
    let err = check_read_only(sql, db).expect_err(&format!("{} accepted: {sql}", db.dialect_name()));
    assert_eq!(err.rule(), Some(want), "{}: {sql}: {err}", db.dialect_name());
    assert!(
        err.to_string().to_lowercase().contains(&names.to_lowercase()),
        "{}: {sql}: message {err} does not name {names}",
        db.dialect_name()
    );
}

#[track_caller]
fn accepted(db: &Database, sql: &str) -> String {
    let normal = check_read_only(sql, db).unwrap_or_else(|e| panic!("{} refused {sql}: {e}", db.dialect_name()));
    // The normal form is itself accepted, unchanged.
    assert_eq!(check_read_only(&normal, db).as_deref(), Ok(normal.as_str()), "{sql}");
    normal
}

#[test]
fn stacked_statements_are_refused() {
    for db in both() {
        refused(&db, "SELECT 1; DROP TABLE customers", rule::ONE_STATEMENT, "DROP");
        refused(&db, "SELECT * FROM customers; DELETE FROM customers", rule::ONE_STATEMENT, "DELETE");
        refused(&db, "SELECT 1; SELECT 2", rule::ONE_STATEMENT, "2 statements");
        refused(&db, "sElEcT 1;\n dRoP tAbLe customers;", rule::ONE_STATEMENT, "DROP");
        refused(&db, "SELECT 1 /* ; */ ; DROP TABLE customers", rule::ONE_STATEMENT, "DROP");
        refused(&db, "", rule::ONE_STATEMENT, "no statement");
        refused(&db, "  -- just a comment", rule::ONE_STATEMENT, "no statement");
    }
}

#[test]
fn comments_do_not_hide_or_add_statements() {
    for db in both() {
        // The `;` and `DROP` live in comments: one harmless query, and the normal form drops the comments.
        let normal = accepted(&db, "SELECT 1 -- ; DROP TABLE customers");
        assert_eq!(normal, "SELECT 1");
        assert_eq!(accepted(&db, "SELECT 1 /* ; DROP TABLE customers */"), "SELECT 1");
        assert_eq!(accepted(&db, "SELECT 1; -- DROP TABLE customers"), "SELECT 1");
        // A string holding a `;` is a value, not a separator.
        accepted(&db, "SELECT '; DROP TABLE customers' AS s");
    }
}

#[test]
fn statements_that_are_not_queries_are_refused() {
    for db in both() {
        for (sql, names) in [
            ("INSERT INTO customers (name) VALUES ('x')", "INSERT"),
            ("UPDATE customers SET name = 'x'", "UPDATE"),
            ("DELETE FROM customers", "DELETE"),
            ("DROP TABLE customers", "DROP"),
            ("CREATE TABLE x (a INT)", "CREATE"),
            ("CREATE TABLE x AS SELECT * FROM customers", "CREATE"),
            ("ALTER TABLE customers ADD COLUMN x INT", "ALTER"),
            ("EXPLAIN SELECT 1", "EXPLAIN"),
            ("BEGIN", "BEGIN"),
            ("COMMIT", "COMMIT"),
        ] {
            refused(&db, sql, rule::NOT_A_QUERY, names);
        }
    }
    refused(&sqlite(), "ATTACH DATABASE '/tmp/other.db' AS other", rule::NOT_A_QUERY, "ATTACH");
    refused(&sqlite(), "attach '/tmp/other.db' as other", rule::NOT_A_QUERY, "ATTACH");
    refused(&sqlite(), "PRAGMA writable_schema = 1", rule::NOT_A_QUERY, "PRAGMA");
    refused(&sqlite(), "PRAGMA query_only = 0", rule::NOT_A_QUERY, "PRAGMA");
    refused(&sqlite(), "pragma main.journal_mode", rule::NOT_A_QUERY, "PRAGMA");
    // What the parser cannot read is refused too.
    refused(&sqlite(), "PRAGMA writable_schema = ON", rule::PARSE, "ON");
    refused(&sqlite(), "EXPLAIN QUERY PLAN SELECT 1", rule::NOT_A_QUERY, "EXPLAIN");
    refused(&sqlite(), "VACUUM", rule::NOT_A_QUERY, "VACUUM");
    let pg = postgres();
    refused(&pg, "COPY customers TO '/tmp/customers.csv'", rule::NOT_A_QUERY, "COPY");
    refused(&pg, "COPY (SELECT 1) TO PROGRAM 'rm -rf /'", rule::NOT_A_QUERY, "COPY");
    refused(&pg, "COPY customers FROM STDIN", rule::NOT_A_QUERY, "COPY");
    refused(&pg, "SET statement_timeout = 0", rule::NOT_A_QUERY, "SET");
    refused(&pg, "SET TRANSACTION READ WRITE", rule::NOT_A_QUERY, "SET");
    refused(
        &pg,
        "EXPLAIN ANALYZE WITH gone AS (DELETE FROM orders RETURNING *) SELECT * FROM gone",
        rule::NOT_A_QUERY,
        "EXPLAIN",
    );
    refused(&pg, "explain (analyze) select * from orders", rule::NOT_A_QUERY, "EXPLAIN");
    refused(&pg, "CALL do_things()", rule::NOT_A_QUERY, "CALL");
    refused(&pg, "DO $$ BEGIN DELETE FROM orders; END $$", rule::PARSE, "DO");
    refused(&pg, "LOCK TABLE orders", rule::NOT_A_QUERY, "LOCK");
}

#[test]
fn data_modifying_ctes_are_refused() {
    let pg = postgres();
    for (sql, names) in [
        ("WITH gone AS (DELETE FROM orders RETURNING *) SELECT * FROM gone", "DELETE"),
        ("WITH added AS (INSERT INTO orders (id) VALUES (9) RETURNING *) SELECT count(*) FROM added", "INSERT"),
        ("WITH changed AS (UPDATE orders SET total = 0 RETURNING id) SELECT * FROM changed", "UPDATE"),
        ("with a as (select 1), B as (delete from orders returning id) select * from a", "DELETE"),
        // Nested in a derived table and in a scalar subquery.
        ("SELECT * FROM (WITH g AS (DELETE FROM orders RETURNING *) SELECT * FROM g) AS s", "DELETE"),
        ("SELECT (WITH g AS (DELETE FROM orders RETURNING id) SELECT max(id) FROM g)", "DELETE"),
    ] {
        refused(&pg, sql, rule::DATA_MODIFYING_CTE, names);
    }
    // SQLite has no data-modifying CTEs, but its parser reads one the same way and the rule refuses it.
    refused(
        &sqlite(),
        "WITH gone AS (DELETE FROM orders RETURNING *) SELECT * FROM gone",
        rule::DATA_MODIFYING_CTE,
        "DELETE",
    );
}

#[test]
fn select_into_and_locking_clauses_are_refused() {
    for db in both() {
        refused(&db, "SELECT * INTO backup FROM customers", rule::SELECT_INTO, "backup");
    }
    let pg = postgres();
    refused(&pg, "SELECT id INTO TEMP t2 FROM orders", rule::SELECT_INTO, "t2");
    for (sql, names) in [
        ("SELECT * FROM orders FOR UPDATE", "FOR UPDATE"),
        ("SELECT * FROM orders FOR SHARE", "FOR SHARE"),
        ("select * from orders for update skip locked", "FOR UPDATE"),
        ("SELECT * FROM orders FOR UPDATE OF orders NOWAIT", "FOR UPDATE"),
        ("SELECT * FROM (SELECT * FROM orders FOR UPDATE) AS o", "FOR UPDATE"),
        ("SELECT * FROM customers WHERE id IN (SELECT customer_id FROM orders FOR SHARE)", "FOR SHARE"),
    ] {
        refused(&pg, sql, rule::LOCKING_CLAUSE, names);
    }
    // Row-locking clauses PostgreSQL has that the parser may not know still never pass.
    for sql in ["SELECT * FROM orders FOR NO KEY UPDATE", "SELECT * FROM orders FOR KEY SHARE"] {
        let err = check_read_only(sql, &pg).expect_err(sql);
        assert!(matches!(err.rule(), Some(rule::LOCKING_CLAUSE | rule::PARSE)), "{sql}: {err}");
    }
}

/// Every denied function, in every place a call can hide, schema-qualified and in odd case.
#[test]
fn denied_functions_are_refused_wherever_they_hide() {
    let functions = [
        "pg_read_file",
        "pg_read_binary_file",
        "pg_ls_dir",
        "pg_stat_file",
        "pg_sleep",
        "pg_sleep_for",
        "pg_sleep_until",
        "lo_import",
        "lo_export",
        "lo_get",
        "lo_put",
        "dblink",
        "dblink_exec",
        "nextval",
        "setval",
        "currval",
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "set_config",
        "pg_advisory_lock",
        "pg_advisory_xact_lock",
        "pg_try_advisory_lock",
        "pg_advisory_unlock_all",
        "query_to_xml",
        "load_extension",
        "readfile",
        "writefile",
        "edit",
        "fts3_tokenizer",
    ];
    let places = [
        "SELECT {f}('x')",
        "SELECT {F}('x')",
        "SELECT pg_catalog.{f}('x')",
        "SELECT \"{f}\"('x')",
        "SELECT id FROM customers WHERE id IN (SELECT 1 FROM orders WHERE {f}('x') IS NULL)",
        "SELECT * FROM (SELECT * FROM (SELECT {f}('x') AS v) AS a) AS b",
        "WITH c AS (SELECT {f}('x') AS v) SELECT * FROM c",
        "SELECT coalesce(length(CAST({f}('x') AS TEXT)), 0)",
        "SELECT c.id FROM customers c JOIN orders o ON o.customer_id = c.id AND {f}('x') IS NULL",
        "SELECT id FROM customers ORDER BY {f}('x')",
        "SELECT id, count(*) FROM customers GROUP BY id HAVING count(*) > length({f}('x'))",
        "SELECT CASE WHEN id > 0 THEN {f}('x') END FROM customers",
        "SELECT id FROM customers UNION SELECT {f}('x')",
        "SELECT * FROM {f}('x')",
        "SELECT * FROM customers, LATERAL (SELECT {f}('x')) AS l",
        "SELECT count(*) OVER (PARTITION BY {f}('x')) FROM customers",
    ];
    for db in both() {
        for function in functions {
            for place in places {
                let sql = place.replace("{f}", function).replace("{F}", &function.to_uppercase());
                refused(&db, &sql, rule::DENIED_FUNCTION, function);
            }
        }
        refused(&db, "SELECT PG_CATALOG.PG_SLEEP(10)", rule::DENIED_FUNCTION, "pg_sleep");
        refused(
            &db,
            "SELECT * FROM customers WHERE id = (SELECT max(id) FROM (SELECT pg_sleep(1)) s)",
            rule::DENIED_FUNCTION,
            "pg_sleep",
        );
        refused(&db, "SELECT load_extension('/tmp/evil.so')", rule::DENIED_FUNCTION, "load_extension");
    }
}

#[test]
fn ordinary_queries_pass_in_both_dialects() {
    for db in both() {
        for sql in [
            "SELECT 1",
            "SELECT COUNT(*) FROM customers",
            "select count(*) from orders where total > 100",
            "SELECT c.name, SUM(o.total) AS spent FROM customers c JOIN orders o ON o.customer_id = c.id \
             GROUP BY c.name HAVING SUM(o.total) > 10 ORDER BY spent DESC LIMIT 5",
            "SELECT c.name FROM customers c LEFT JOIN orders o ON o.customer_id = c.id WHERE o.id IS NULL",
            "SELECT name FROM customers WHERE id IN (SELECT customer_id FROM orders WHERE total > 50)",
            "SELECT name FROM customers WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = customers.id)",
            "SELECT name FROM customers UNION SELECT 'nobody' UNION ALL SELECT name FROM customers",
            "SELECT id FROM customers EXCEPT SELECT customer_id FROM orders",
            "WITH big AS (SELECT * FROM orders WHERE total > 100) SELECT customer_id, count(*) FROM big GROUP BY customer_id",
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10) SELECT sum(i) FROM n",
            "SELECT id, total, rank() OVER (PARTITION BY customer_id ORDER BY total DESC) AS r FROM orders",
            "SELECT id, sum(total) OVER (ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) FROM orders",
            "SELECT CASE WHEN total > 100 THEN 'big' ELSE 'small' END AS size, count(*) FROM orders GROUP BY 1",
            "SELECT lower(name), length(name), coalesce(email, '-') FROM customers WHERE name LIKE 'A%'",
            "SELECT * FROM (SELECT customer_id, max(total) AS m FROM orders GROUP BY customer_id) AS t WHERE m > 1",
            "SELECT \"Name\" FROM \"Customers\"",
            "SELECT DISTINCT customer_id FROM orders ORDER BY customer_id",
        ] {
            accepted(&db, sql);
        }
    }
    // Dialect-specific reads.
    accepted(&sqlite(), "SELECT name FROM sqlite_master WHERE type = 'table'");
    accepted(&sqlite(), "SELECT strftime('%Y', created_at) AS y, count(*) FROM orders GROUP BY y");
    accepted(&postgres(), "SELECT date_trunc('month', created_at) AS m, count(*) FROM orders GROUP BY m");
    accepted(&postgres(), "SELECT total::text, id::bigint FROM orders WHERE created_at > now() - interval '30 days'");
    accepted(&postgres(), "SELECT * FROM generate_series(1, 10) AS g(i)");
    accepted(&postgres(), "SELECT string_agg(name, ', ' ORDER BY name) FROM customers");
}

#[test]
fn the_normal_form_is_what_runs() {
    let normal = check_read_only("  select   id\nfrom customers  -- trailing\n;  ", &sqlite()).expect("accepted");
    assert_eq!(normal, "SELECT id FROM customers");
}

#[test]
fn errors_classify() {
    let err = check_read_only("SELEC 1", &sqlite()).expect_err("typo");
    assert!(matches!(err, SqlError::Parse(_)), "{err:?}");
    assert_eq!(err.rule(), Some(rule::PARSE));
    assert_eq!(SqlError::Query("boom".into()).rule(), None);
    assert!(shoal_sql::is_denied_function("PG_CATALOG.PG_SLEEP"));
    assert!(shoal_sql::is_denied_function("pg_advisory_xact_lock_shared"));
    assert!(!shoal_sql::is_denied_function("count"));
    assert!(!shoal_sql::is_denied_function("lower"));
}
