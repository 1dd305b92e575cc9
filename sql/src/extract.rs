//! Pulling the SQL out of a model's answer: models wrap it in ```` ```sql ```` fences or surround it with
//! prose.

/// Fence info strings that mark a block as SQL.
const SQL_FENCE_TAGS: &[&str] = &["sql", "sqlite", "sqlite3", "postgres", "postgresql", "psql", "pgsql", "plpgsql"];

/// The first SQL query in a model's answer, trimmed and without its closing `;`, or `None` when there is
/// none.
///
/// A fenced block tagged as SQL (```` ```sql ````) wins; then an untagged fenced block that starts with
/// `SELECT` or `WITH`; then, in plain text, the query starting at a `SELECT` or `WITH` keyword (one at the
/// start of a line first, then an upper-case one, then any) and running to the first `;`, blank line or
/// closing backtick outside quotes and comments. The result is only text: it still has to pass
/// [`check_read_only`](crate::check_read_only).
pub fn extract_sql(model_text: &str) -> Option<String> {
    let blocks = fenced_blocks(model_text);
    let tagged = blocks.iter().find(|(tag, body)| SQL_FENCE_TAGS.contains(&tag.as_str()) && !body.trim().is_empty());
    let untagged = || blocks.iter().find(|(tag, body)| tag.is_empty() && query_start(body) == Some(0));
    if let Some((_, body)) = tagged.or_else(untagged) {
        let body = body.trim();
        return non_empty(&body[..statement_end(body, false, false)]);
    }
    let start = query_start(model_text)?;
    let text = &model_text[start..];
    let in_backticks = model_text[..start].ends_with('`');
    non_empty(&text[..statement_end(text, in_backticks, true)])
}

fn non_empty(sql: &str) -> Option<String> {
    let sql = sql.trim();
    (!sql.is_empty()).then(|| sql.to_string())
}

/// The fenced code blocks, as (lower-case info tag, body). An unclosed fence runs to the end.
fn fenced_blocks(text: &str) -> Vec<(String, &str)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, usize)> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if let Some(info) = trimmed.strip_prefix("```") {
            match open.take() {
                Some((tag, body_start)) => blocks.push((tag, &text[body_start..offset])),
                None => {
                    let tag = info.split_whitespace().next().unwrap_or("").to_lowercase();
                    open = Some((tag, offset + line.len()));
                }
            }
        }
        offset += line.len();
    }
    if let Some((tag, body_start)) = open {
        blocks.push((tag, &text[body_start..]));
    }
    blocks
}

/// Where the most likely query starts: a `SELECT` or `WITH` keyword (`WITH` only when a CTE follows)
/// at the start of a line, else an upper-case one, else any.
fn query_start(text: &str) -> Option<usize> {
    let candidates: Vec<usize> = keyword_positions(text)
        .filter(|&at| {
            !text[at..].get(..4).is_some_and(|w| w.eq_ignore_ascii_case("with")) || cte_follows(&text[at + 4..])
        })
        .collect();
    let line_start = |at: &usize| text[..*at].rsplit('\n').next().is_some_and(|before| before.trim().is_empty());
    let upper = |at: &usize| text[*at..].starts_with("SELECT") || text[*at..].starts_with("WITH");
    candidates
        .iter()
        .find(|at| line_start(at))
        .or_else(|| candidates.iter().find(|at| upper(at)))
        .or(candidates.first())
        .copied()
}

/// Byte offsets of the words `select` and `with`, any case, standing alone.
fn keyword_positions(text: &str) -> impl Iterator<Item = usize> + '_ {
    let lower = text.to_ascii_lowercase();
    let is_word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let bytes = text.as_bytes();
    (0..text.len()).filter(move |&at| {
        let rest = &lower.as_bytes()[at..];
        let len = if rest.starts_with(b"select") {
            6
        } else if rest.starts_with(b"with") {
            4
        } else {
            return false;
        };
        let before_ok = at == 0 || !is_word(bytes[at - 1]);
        let after_ok = bytes.get(at + len).is_none_or(|&c| !is_word(c));
        before_ok && after_ok
    })
}

/// Whether the text after `WITH` reads like a CTE: `[RECURSIVE] name [(columns)] AS [[NOT] MATERIALIZED] (`.
fn cte_follows(after_with: &str) -> bool {
    let mut words = after_with.trim_start();
    if let Some(rest) = strip_word(words, "recursive") {
        words = rest.trim_start();
    }
    let name_len = words.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '"')).unwrap_or(words.len());
    if name_len == 0 {
        return false;
    }
    let mut rest = words[name_len..].trim_start();
    if let Some(columns) = rest.strip_prefix('(') {
        match columns.find(')') {
            Some(end) => rest = columns[end + 1..].trim_start(),
            None => return false,
        }
    }
    let Some(mut rest) = strip_word(rest, "as").map(str::trim_start) else {
        return false;
    };
    if let Some(after) = strip_word(rest, "not") {
        rest = after.trim_start();
    }
    if let Some(after) = strip_word(rest, "materialized") {
        rest = after.trim_start();
    }
    rest.starts_with('(')
}

/// `text` after a leading `word` (any case) that stands alone.
fn strip_word<'a>(text: &'a str, word: &str) -> Option<&'a str> {
    let head = text.get(..word.len())?;
    let rest = &text[word.len()..];
    let alone = rest.chars().next().is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
    (head.eq_ignore_ascii_case(word) && alone).then_some(rest)
}

/// Where the first statement in `text` ends: at a `;`, at a blank line, or at a backtick when the query was
/// quoted inline, whichever comes first outside quotes and comments; else at the end. Blank lines end it
/// only in prose (`in_prose`), not inside a fenced block.
fn statement_end(text: &str, in_backticks: bool, in_prose: bool) -> usize {
    let bytes = text.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b';' => return at,
            b'`' if in_backticks => return at,
            quote @ (b'\'' | b'"') => {
                at += 1;
                while at < bytes.len() && bytes[at] != quote {
                    at += 1;
                }
            }
            b'-' if bytes.get(at + 1) == Some(&b'-') => {
                while at < bytes.len() && bytes[at] != b'\n' {
                    at += 1;
                }
                continue;
            }
            b'/' if bytes.get(at + 1) == Some(&b'*') => {
                at = text[at + 2..].find("*/").map_or(bytes.len(), |end| at + 2 + end + 2);
                continue;
            }
            b'\n' if in_prose => {
                let rest = &text[at + 1..];
                let line_end = rest.find('\n').unwrap_or(rest.len());
                if rest[..line_end].trim().is_empty() {
                    return at;
                }
            }
            _ => {}
        }
        at += 1;
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::extract_sql;

    fn extract(text: &str) -> Option<String> {
        extract_sql(text)
    }

    #[test]
    fn fenced_blocks_win() {
        let answer =
            "Here is the query:\n\n```sql\nSELECT name\nFROM customers\n\nWHERE id = 1;\n```\n\nIt lists names.";
        assert_eq!(extract(answer).as_deref(), Some("SELECT name\nFROM customers\n\nWHERE id = 1"));
        // A SQL-tagged block beats an earlier block in another language and SQL in the prose.
        let answer =
            "Use SELECT 2 maybe.\n```python\nprint('select 1')\n```\n```SQL\nWITH t AS (SELECT 1) SELECT * FROM t\n```";
        assert_eq!(extract(answer).as_deref(), Some("WITH t AS (SELECT 1) SELECT * FROM t"));
        // An untagged block counts when it holds a query; an unclosed fence runs to the end.
        assert_eq!(extract("```\nselect 1\n```").as_deref(), Some("select 1"));
        assert_eq!(extract("```postgresql\nSELECT now()").as_deref(), Some("SELECT now()"));
        // Only the first statement of the block.
        assert_eq!(extract("```sql\nSELECT 1; DROP TABLE t;\n```").as_deref(), Some("SELECT 1"));
        // A `;` in a string or comment does not end it.
        let quoted = "```sql\nSELECT ';' AS s -- ; not the end\nFROM t;\n```";
        assert_eq!(extract(quoted).as_deref(), Some("SELECT ';' AS s -- ; not the end\nFROM t"));
    }

    #[test]
    fn unfenced_sql_is_found_in_prose() {
        let answer =
            "To answer this, select the matching rows with a join:\nSELECT c.name, count(*)\nFROM customers c\n\
                      JOIN orders o ON o.customer_id = c.id GROUP BY c.name;\nThis counts orders per customer.";
        assert_eq!(
            extract(answer).as_deref(),
            Some("SELECT c.name, count(*)\nFROM customers c\nJOIN orders o ON o.customer_id = c.id GROUP BY c.name")
        );
        let answer = "WITH big AS (SELECT * FROM orders WHERE total > 100)\nSELECT count(*) FROM big\n\nThat's it.";
        assert_eq!(
            extract(answer).as_deref(),
            Some("WITH big AS (SELECT * FROM orders WHERE total > 100)\nSELECT count(*) FROM big")
        );
        // "with" in prose is not a CTE; the upper-case SELECT mid-line is the query.
        let answer = "I'll answer with care: SELECT count(*) FROM orders";
        assert_eq!(extract(answer).as_deref(), Some("SELECT count(*) FROM orders"));
        // Inline code ends at its backtick.
        assert_eq!(extract("Run `SELECT 1 AS one` and see.").as_deref(), Some("SELECT 1 AS one"));
        assert_eq!(extract("select id from t").as_deref(), Some("select id from t"));
    }

    #[test]
    fn no_sql_is_none() {
        assert_eq!(extract(""), None);
        assert_eq!(extract("I cannot answer that from this database."), None);
        assert_eq!(extract("Selection of items with care"), None);
        assert_eq!(extract("```python\nprint(1)\n```"), None);
        assert_eq!(extract("```sql\n\n```"), None);
    }
}
