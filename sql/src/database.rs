//! Which database a question runs against, how it is shown to people, and the limits a query runs under.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Rows a query returns by default before it is cut off.
pub const DEFAULT_MAX_ROWS: usize = 200;
/// How long a query may run by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to PostgreSQL may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long reading a schema (with its samples) may take.
pub const INTROSPECT_TIMEOUT: Duration = Duration::from_secs(30);
/// What a password is replaced with wherever a database is shown.
const REDACTED: &str = "***";

/// A database a question can run against.
///
/// Serialized as `{"kind": "sqlite", "path": ...}` or `{"kind": "postgres", "url": ...}`. The serialized
/// form is configuration and keeps the URL as given, password included; show people [`Database::redacted`]
/// (`Debug` and `Display` use it too).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Database {
    /// A SQLite database file, opened read-only.
    Sqlite {
        /// The file.
        path: PathBuf,
    },
    /// A PostgreSQL server: a `postgresql://user:password@host:port/db` URL or a `key=value` string.
    Postgres {
        /// The connection string.
        url: String,
    },
}

/// The SQL dialect a database speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl Dialect {
    /// The dialect's name for people and prompts: `SQLite` or `PostgreSQL`.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "SQLite",
            Dialect::Postgres => "PostgreSQL",
        }
    }
}

impl Database {
    /// The database as it may be shown: the SQLite path, or the PostgreSQL URL with its password replaced
    /// by `***`.
    pub fn redacted(&self) -> String {
        match self {
            Database::Sqlite { path } => path.display().to_string(),
            Database::Postgres { url } => redact_url(url),
        }
    }

    /// The dialect it speaks.
    pub fn dialect(&self) -> Dialect {
        match self {
            Database::Sqlite { .. } => Dialect::Sqlite,
            Database::Postgres { .. } => Dialect::Postgres,
        }
    }

    /// The dialect's name: `SQLite` or `PostgreSQL`.
    pub fn dialect_name(&self) -> &'static str {
        self.dialect().name()
    }

    /// Replaces this database's password wherever it appears in `text` (driver messages can quote it).
    pub(crate) fn scrub(&self, text: &str) -> String {
        match self {
            Database::Postgres { url } => {
                let mut text = text.replace(url.as_str(), &redact_url(url));
                for password in passwords(url) {
                    text = text.replace(password, REDACTED);
                }
                text
            }
            Database::Sqlite { .. } => text.to_string(),
        }
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite { path } => f.debug_struct("Sqlite").field("path", path).finish(),
            Database::Postgres { .. } => f.debug_struct("Postgres").field("url", &self.redacted()).finish(),
        }
    }
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.dialect_name(), self.redacted())
    }
}

/// The limits a query runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rows returned at most; a result cut here is reported as truncated.
    pub max_rows: usize,
    /// How long the statement may run.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_rows: DEFAULT_MAX_ROWS, timeout: DEFAULT_TIMEOUT }
    }
}

/// Where each password in a connection string lies, as byte ranges: the one in a URL's user info, and any
/// `password=` value (a URL query parameter or a `key=value` pair).
fn password_ranges(url: &str) -> Vec<(usize, usize)> {
    let mut ranges = Vec::new();
    if let Some(scheme_end) = url.find("://") {
        let authority_start = scheme_end + 3;
        let rest = &url[authority_start..];
        let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_len];
        if let Some(at) = authority.rfind('@') {
            if let Some(colon) = authority[..at].find(':') {
                ranges.push((authority_start + colon + 1, authority_start + at));
            }
        }
    }
    let lower = url.to_ascii_lowercase();
    let mut from = 0;
    while let Some(found) = lower[from..].find("password") {
        let key_start = from + found;
        from = key_start + "password".len();
        let boundary = key_start == 0 || matches!(url.as_bytes()[key_start - 1], b'?' | b'&' | b' ' | b'\t');
        let after_key = url[from..].trim_start();
        if !boundary || !after_key.starts_with('=') {
            continue;
        }
        let value_start = url.len() - after_key.len() + 1;
        let value = &url[value_start..];
        let value_start = value_start + (value.len() - value.trim_start().len());
        let value = &url[value_start..];
        let value_len = if let Some(quoted) = value.strip_prefix('\'') {
            quoted.find('\'').map_or(value.len(), |end| end + 2)
        } else {
            value.find(['&', ' ', '\t', '#']).unwrap_or(value.len())
        };
        if value_len > 0 {
            ranges.push((value_start, value_start + value_len));
        }
    }
    ranges.sort_unstable();
    ranges
}

/// The passwords in a connection string.
fn passwords(url: &str) -> Vec<&str> {
    password_ranges(url).into_iter().map(|(start, end)| &url[start..end]).filter(|p| !p.is_empty()).collect()
}

/// The connection string with every password replaced by `***`.
fn redact_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut at = 0;
    for (start, end) in password_ranges(url) {
        if start < at {
            continue;
        }
        out.push_str(&url[at..start]);
        out.push_str(REDACTED);
        at = end;
    }
    out.push_str(&url[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(url: &str) -> Database {
        Database::Postgres { url: url.to_string() }
    }

    #[test]
    fn redacted_hides_every_form_of_password() {
        let cases = [
            ("postgresql://alice:s3cret@db.example:5432/shop", "postgresql://alice:***@db.example:5432/shop"),
            ("postgres://alice:p%40ss@host/db?sslmode=disable", "postgres://alice:***@host/db?sslmode=disable"),
            ("postgres://alice@host/db", "postgres://alice@host/db"),
            ("postgres://host/db?user=a&password=hunter2&x=1", "postgres://host/db?user=a&password=***&x=1"),
            ("host=localhost user=a password=hunter2 dbname=x", "host=localhost user=a password=*** dbname=x"),
            ("host=localhost password = 'two words' dbname=x", "host=localhost password = *** dbname=x"),
        ];
        for (url, want) in cases {
            assert_eq!(pg(url).redacted(), want, "{url}");
            assert!(!format!("{:?} {}", pg(url), pg(url)).contains("hunter2"));
        }
        let db = pg("postgresql://alice:s3cret@db.example/shop");
        assert_eq!(
            db.scrub("auth failed for s3cret at postgresql://alice:s3cret@db.example/shop"),
            format!("auth failed for *** at {}", db.redacted())
        );
    }

    #[test]
    fn database_serializes_tagged() {
        let db = Database::Sqlite { path: PathBuf::from("/data/shop.db") };
        let json = serde_json::to_value(&db).expect("serialize");
        assert_eq!(json, serde_json::json!({"kind": "sqlite", "path": "/data/shop.db"}));
        let back: Database = serde_json::from_value(serde_json::json!({"kind": "postgres", "url": "postgres://h/d"}))
            .expect("deserialize");
        assert_eq!(back, pg("postgres://h/d"));
        assert_eq!(back.dialect_name(), "PostgreSQL");
    }
}
