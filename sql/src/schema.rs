//! A database's schema as the model sees it: tables, columns, keys and a few sample values, rendered as
//! compact `CREATE TABLE` text for a prompt.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

/// Characters of a sample value shown in a prompt; longer ones are cut with `…`.
pub const SAMPLE_CHARS: usize = 40;
/// Rows scanned per column when sampling values, so sampling a large table stays cheap.
pub const SAMPLE_SCAN_ROWS: usize = 10_000;

/// The tables (and views) of a database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    /// The SQL dialect queries must be written in: `SQLite` or `PostgreSQL`.
    pub dialect: String,
    /// The tables and views, ordered by schema and name.
    pub tables: Vec<Table>,
}

/// A table or view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    /// The PostgreSQL schema it lives in; `None` for SQLite.
    pub schema: Option<String>,
    /// Its name.
    pub name: String,
    /// Whether it is a view (or materialized view) rather than a table.
    pub view: bool,
    /// Its columns, in order.
    pub columns: Vec<Column>,
    /// Its foreign keys.
    pub foreign_keys: Vec<ForeignKey>,
}

/// A column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its declared type as the database spells it (may be empty in SQLite).
    pub data_type: String,
    /// Whether it is part of the primary key.
    pub primary_key: bool,
    /// A few distinct non-null values, as text.
    pub samples: Vec<String>,
}

/// A foreign key: `columns` of this table reference `ref_columns` of `ref_table`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForeignKey {
    /// The referencing columns.
    pub columns: Vec<String>,
    /// The referenced table (schema-qualified outside PostgreSQL's `public`).
    pub ref_table: String,
    /// The referenced columns.
    pub ref_columns: Vec<String>,
}

impl Table {
    /// The name a query uses: `schema.name` outside PostgreSQL's `public` schema, else the name.
    pub fn qualified_name(&self) -> String {
        qualified(self.schema.as_deref(), &self.name)
    }
}

impl Schema {
    /// The schema as prompt text: a dialect line, then per table a `CREATE TABLE` with column types, keys and
    /// sample values in comments.
    pub fn prompt_text(&self) -> String {
        let mut out = format!("-- {} database\n", self.dialect);
        for table in &self.tables {
            let _ =
                write!(out, "\nCREATE {} {} (\n", if table.view { "VIEW" } else { "TABLE" }, table.qualified_name());
            let primary: Vec<&str> = table.columns.iter().filter(|c| c.primary_key).map(|c| c.name.as_str()).collect();
            let mut lines: Vec<(String, String)> = table
                .columns
                .iter()
                .map(|column| {
                    let mut line = format!("  {}", quote_if_needed(&column.name));
                    if !column.data_type.is_empty() {
                        line.push(' ');
                        line.push_str(&column.data_type);
                    }
                    if column.primary_key && primary.len() == 1 {
                        line.push_str(" PRIMARY KEY");
                    }
                    (line, samples_comment(&column.samples))
                })
                .collect();
            if primary.len() > 1 {
                lines.push((format!("  PRIMARY KEY ({})", join_quoted(&primary)), String::new()));
            }
            for key in &table.foreign_keys {
                let line = format!(
                    "  FOREIGN KEY ({}) REFERENCES {} ({})",
                    join_quoted(&key.columns),
                    key.ref_table,
                    join_quoted(&key.ref_columns)
                );
                lines.push((line, String::new()));
            }
            let count = lines.len();
            for (i, (line, comment)) in lines.into_iter().enumerate() {
                out.push_str(&line);
                if i + 1 < count {
                    out.push(',');
                }
                out.push_str(&comment);
                out.push('\n');
            }
            out.push_str(");\n");
        }
        out
    }
}

/// ` -- e.g. 1, 'Ada', ...` for the samples, or nothing.
fn samples_comment(samples: &[String]) -> String {
    if samples.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = samples.iter().map(|s| show_sample(s)).collect();
    format!(" -- e.g. {}", shown.join(", "))
}

/// A sample on one line, cut to [`SAMPLE_CHARS`], quoted unless it is a number.
fn show_sample(sample: &str) -> String {
    if sample.parse::<f64>().is_ok() && sample.len() <= SAMPLE_CHARS {
        return sample.to_string();
    }
    let one_line: String = sample.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let mut cut: String = one_line.chars().take(SAMPLE_CHARS).collect();
    if one_line.chars().count() > SAMPLE_CHARS {
        cut.truncate(cut.trim_end().len());
        cut.push('…');
    }
    format!("'{}'", cut.replace('\'', "''"))
}

fn join_quoted<S: AsRef<str>>(names: &[S]) -> String {
    names.iter().map(|n| quote_if_needed(n.as_ref())).collect::<Vec<_>>().join(", ")
}

/// `schema.name` as a query spells it, the schema left out when it is `None` or `public`.
pub(crate) fn qualified(schema: Option<&str>, name: &str) -> String {
    match schema {
        Some(schema) if schema != "public" => format!("{}.{}", quote_if_needed(schema), quote_if_needed(name)),
        _ => quote_if_needed(name),
    }
}

/// A name as a query must spell it: bare when it is a plain lower-case identifier, else double-quoted.
fn quote_if_needed(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        quote_ident(name)
    }
}

/// A name double-quoted, inner quotes doubled: safe to put in SQL as an identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, data_type: &str, primary_key: bool, samples: &[&str]) -> Column {
        Column {
            name: name.into(),
            data_type: data_type.into(),
            primary_key,
            samples: samples.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn prompt_text_renders_keys_and_samples() {
        let schema = Schema {
            dialect: "SQLite".into(),
            tables: vec![
                Table {
                    schema: None,
                    name: "orders".into(),
                    view: false,
                    columns: vec![
                        column("id", "INTEGER", true, &["1", "2"]),
                        column("customer_id", "INTEGER", false, &[]),
                        column("Note", "TEXT", false, &["it's\nlong and goes on and on and on and on and on and on"]),
                    ],
                    foreign_keys: vec![ForeignKey {
                        columns: vec!["customer_id".into()],
                        ref_table: "customers".into(),
                        ref_columns: vec!["id".into()],
                    }],
                },
                Table {
                    schema: Some("sales".into()),
                    name: "lines".into(),
                    view: true,
                    columns: vec![column("a", "int", true, &[]), column("b", "int", true, &[])],
                    foreign_keys: vec![],
                },
            ],
        };
        let text = schema.prompt_text();
        let want = "-- SQLite database\n\
            \nCREATE TABLE orders (\n  id INTEGER PRIMARY KEY, -- e.g. 1, 2\n  customer_id INTEGER,\n  \
            \"Note\" TEXT, -- e.g. 'it''s long and goes on and on and on and…'\n  \
            FOREIGN KEY (customer_id) REFERENCES customers (id)\n);\n\
            \nCREATE VIEW sales.lines (\n  a int,\n  b int,\n  PRIMARY KEY (a, b)\n);\n";
        assert_eq!(text, want);
    }
}
