//! The crate's one error type.

use std::time::Duration;

use crate::check::rule;

/// Why a statement was refused or could not run.
///
/// `Display` never contains a database password: connection errors are scrubbed before they are wrapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    /// The read-only check refused the statement. `rule` is a short stable id from [`rule`](crate::rule)
    /// (`one_statement`, `not_a_query`, `denied_function`, ...); `message` names the offending thing.
    #[error("refused ({rule}): {message}")]
    Refused {
        /// The stable id of the rule the statement broke.
        rule: &'static str,
        /// What broke it, for people and for the model.
        message: String,
    },
    /// The SQL does not parse in the database's dialect (this refuses it too).
    #[error("SQL does not parse: {0}")]
    Parse(String),
    /// The database cannot be reached or opened.
    #[error("database unreachable: {0}")]
    Unreachable(String),
    /// The database ran the statement and reported an error.
    #[error("query failed: {0}")]
    Query(String),
    /// The statement ran past its time limit and was stopped.
    #[error("query timed out after {0:?}")]
    Timeout(Duration),
}

impl SqlError {
    /// The rule a refused statement broke: the rule id for [`SqlError::Refused`], [`rule::PARSE`] for
    /// [`SqlError::Parse`], `None` for errors that are not refusals.
    pub fn rule(&self) -> Option<&'static str> {
        match self {
            SqlError::Refused { rule, .. } => Some(rule),
            SqlError::Parse(_) => Some(rule::PARSE),
            _ => None,
        }
    }

    /// A refusal under `rule`.
    pub(crate) fn refused(rule: &'static str, message: impl Into<String>) -> SqlError {
        SqlError::Refused { rule, message: message.into() }
    }
}
