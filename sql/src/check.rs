//! The read-only check: a statement runs only when it parses as exactly one query that cannot write, lock,
//! or call a dangerous function.
//!
//! The statement is parsed with `sqlparser` in the database's dialect and walked with its [`Visitor`], so a
//! rule holds however deeply the offending part is nested (subqueries, CTEs, joins, function arguments,
//! `ORDER BY` ...). What runs afterwards is the parsed statement printed back (its normal form), never the
//! text that came in, so the database executes exactly what was checked.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, ObjectName, ObjectNamePart, Query, Select, SetExpr, Statement, TableFactor, Visit, Visitor,
};
use sqlparser::dialect::{Dialect as ParserDialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;

use crate::database::{Database, Dialect};
use crate::error::SqlError;

/// The stable ids of the rules a statement can break ([`SqlError::rule`]).
pub mod rule {
    /// The text does not parse in the database's dialect.
    pub const PARSE: &str = "parse";
    /// Not exactly one statement (none, or several stacked with `;`).
    pub const ONE_STATEMENT: &str = "one_statement";
    /// The statement is not a query: DML, DDL, `EXPLAIN`, `PRAGMA`, `ATTACH`, `COPY`, `SET` ...
    pub const NOT_A_QUERY: &str = "not_a_query";
    /// A `WITH` clause holds an `INSERT`, `UPDATE`, `DELETE` or `MERGE`.
    pub const DATA_MODIFYING_CTE: &str = "data_modifying_cte";
    /// A statement other than a query is nested inside the query.
    pub const NESTED_STATEMENT: &str = "nested_statement";
    /// `SELECT ... INTO` creates a table.
    pub const SELECT_INTO: &str = "select_into";
    /// `FOR UPDATE` / `FOR SHARE` and the other row-locking clauses.
    pub const LOCKING_CLAUSE: &str = "locking_clause";
    /// A call of a function on the deny list ([`super::is_denied_function`]).
    pub const DENIED_FUNCTION: &str = "denied_function";
}

/// Functions no query may call, by exact (lower-case) name: they read or write server files, sleep, change
/// sequences or settings, signal backends, take advisory locks, open other connections, or run SQL text
/// that this check never saw.
const DENIED_FUNCTIONS: &[&str] = &[
    // PostgreSQL: files and server programs.
    "pg_read_file",
    "pg_read_binary_file",
    "pg_stat_file",
    // PostgreSQL: time.
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    // PostgreSQL: sequences.
    "nextval",
    "setval",
    "currval",
    "lastval",
    // PostgreSQL: other backends, settings, server state.
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "set_config",
    "pg_notify",
    "pg_switch_wal",
    "pg_promote",
    "pg_create_restore_point",
    "pg_log_backend_memory_contexts",
    "pg_import_system_collations",
    "txid_current",
    "pg_current_xact_id",
    // PostgreSQL: functions that run SQL given as text.
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "ts_stat",
    // Large objects not covered by the `lo_` prefix.
    "loread",
    "lowrite",
    // SQLite: extensions, files, the editor, the tokenizer pointer.
    "load_extension",
    "readfile",
    "writefile",
    "edit",
    "fts3_tokenizer",
];

/// Function name prefixes no query may call: whole families of the functions above.
const DENIED_PREFIXES: &[&str] = &[
    "pg_ls_",               // directory listings
    "pg_read_",             // file reads
    "pg_file_",             // adminpack writes
    "lo_",                  // large objects: lo_import, lo_export, lo_get, lo_put ...
    "dblink",               // dblink, dblink_exec, dblink_connect ...
    "pg_advisory_",         // advisory locks
    "pg_try_advisory_",     // advisory locks
    "pg_stat_reset",        // statistics resets
    "pg_create_",           // replication slots
    "pg_drop_replication_", // replication slots
    "pg_replication_origin_",
    "pg_logical_",
];

/// Whether a function name (any case, schema-qualified or not: only the last part counts) is on the deny
/// list.
pub fn is_denied_function(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name).trim_matches('"').to_lowercase();
    DENIED_FUNCTIONS.contains(&last.as_str()) || DENIED_PREFIXES.iter().any(|prefix| last.starts_with(prefix))
}

/// Checks that `sql` is one read-only query for `db`'s dialect and returns it in normal form (the parsed
/// statement printed back, comments and a trailing `;` gone), which is what should run.
///
/// A refusal is [`SqlError::Refused`] naming the rule it broke ([`rule`]), or [`SqlError::Parse`].
pub fn check_read_only(sql: &str, db: &Database) -> Result<String, SqlError> {
    check_dialect(sql, db.dialect())
}

/// [`check_read_only`] for a dialect.
pub(crate) fn check_dialect(sql: &str, dialect: Dialect) -> Result<String, SqlError> {
    let parser_dialect: &dyn ParserDialect = match dialect {
        Dialect::Sqlite => &SQLiteDialect {},
        Dialect::Postgres => &PostgreSqlDialect {},
    };
    let statements = Parser::parse_sql(parser_dialect, sql).map_err(|e| SqlError::Parse(e.to_string()))?;
    let statement = match statements.as_slice() {
        [one] => one,
        [] => return Err(SqlError::refused(rule::ONE_STATEMENT, "there is no statement")),
        [_, second, ..] => {
            return Err(SqlError::refused(
                rule::ONE_STATEMENT,
                format!(
                    "{} statements where one query is allowed (the second is {})",
                    statements.len(),
                    keyword(second)
                ),
            ))
        }
    };
    let Statement::Query(query) = statement else {
        return Err(SqlError::refused(
            rule::NOT_A_QUERY,
            format!("{} is not a query; only SELECT (or WITH ... SELECT) may run", keyword(statement)),
        ));
    };
    if let ControlFlow::Break(refusal) = query.visit(&mut ReadOnlyVisitor) {
        return Err(refusal);
    }
    Ok(statement.to_string())
}

/// The first keyword of a statement, to name it in a message (`DROP`, `EXPLAIN`, `PRAGMA` ...).
fn keyword(statement: &Statement) -> String {
    statement.to_string().split_whitespace().next().unwrap_or("an empty statement").to_uppercase()
}

/// The data-modifying statement a query body is, if it is one (looking through parentheses and set
/// operations).
fn modifying_body(body: &SetExpr) -> Option<&'static str> {
    match body {
        SetExpr::Insert(_) => Some("INSERT"),
        SetExpr::Update(_) => Some("UPDATE"),
        SetExpr::Delete(_) => Some("DELETE"),
        SetExpr::Merge(_) => Some("MERGE"),
        SetExpr::Query(query) => modifying_body(&query.body),
        SetExpr::SetOperation { left, right, .. } => modifying_body(left).or_else(|| modifying_body(right)),
        SetExpr::Select(_) | SetExpr::Values(_) | SetExpr::Table(_) => None,
    }
}

/// Refuses a call of `name` when it is denied.
fn check_function(name: &ObjectName) -> ControlFlow<SqlError> {
    let last = match name.0.last() {
        Some(ObjectNamePart::Identifier(ident)) => &ident.value,
        Some(ObjectNamePart::Function(function)) => &function.name.value,
        None => return ControlFlow::Continue(()),
    };
    if is_denied_function(last) {
        return ControlFlow::Break(SqlError::refused(
            rule::DENIED_FUNCTION,
            format!("the function {name} is not allowed in a read-only query"),
        ));
    }
    ControlFlow::Continue(())
}

/// Walks a query and stops at the first part that breaks a rule. Only the query is walked (never the
/// statement around it), so any statement it meets is nested.
struct ReadOnlyVisitor;

impl Visitor for ReadOnlyVisitor {
    type Break = SqlError;

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<SqlError> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                if let Some(kind) = modifying_body(&cte.query.body) {
                    return ControlFlow::Break(SqlError::refused(
                        rule::DATA_MODIFYING_CTE,
                        format!("the WITH query {} runs {kind}", cte.alias.name),
                    ));
                }
            }
        }
        if let Some(lock) = query.locks.first() {
            return ControlFlow::Break(SqlError::refused(
                rule::LOCKING_CLAUSE,
                format!("{lock} locks rows; a read-only query may not"),
            ));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<SqlError> {
        match &select.into {
            Some(into) => ControlFlow::Break(SqlError::refused(
                rule::SELECT_INTO,
                format!("{into} writes the result somewhere; a read-only query may not"),
            )),
            None => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<SqlError> {
        ControlFlow::Break(SqlError::refused(
            rule::NESTED_STATEMENT,
            format!("{} inside a query is not allowed", keyword(statement)),
        ))
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<SqlError> {
        match expr {
            Expr::Function(function) => check_function(&function.name),
            _ => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<SqlError> {
        match factor {
            // `FROM pg_ls_dir('.')`: a table name with arguments is a function call.
            TableFactor::Table { name, args: Some(_), .. } | TableFactor::Function { name, .. } => check_function(name),
            _ => ControlFlow::Continue(()),
        }
    }
}
