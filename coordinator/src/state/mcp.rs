//! External MCP servers that `mcp` graph steps call, as the replicated state registers them,
//! and how their secrets are shown: never. Header values, a URL's user info and its query
//! values are `***` wherever a record is shown ([`McpServerRecord::shown`]), and
//! [`McpServerRecord::scrub`] takes them out of any text (an error from a transport that
//! quotes the URL, say).

use rkyv::{Archive, Deserialize as RkyvDeserialize, Serialize as RkyvSerialize};
use serde::Serialize;
use serde_json::{json, Value};

/// What a secret is shown as.
pub const REDACTED: &str = "***";

/// How the gateway reaches the server.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum McpTransport {
    /// Streamable HTTP at `url`.
    Http,
    /// A child process speaking MCP on its stdin/stdout, started on the gateway that runs
    /// the step.
    Stdio,
}

/// One HTTP header sent with every request to an HTTP server (its value is a secret).
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq, Eq)]
pub struct McpHeader {
    pub name: String,
    pub value: String,
}

/// A registered MCP server.
#[derive(Archive, RkyvSerialize, RkyvDeserialize, Debug, Clone, PartialEq, Eq)]
pub struct McpServerRecord {
    pub name: String,
    pub transport: McpTransport,
    /// The Streamable HTTP endpoint (`Http`; empty for `Stdio`).
    pub url: String,
    pub headers: Vec<McpHeader>,
    /// The program and its arguments (`Stdio`; empty for `Http`).
    pub command: Vec<String>,
    pub description: String,
    pub created_at_ms: u64,
}

impl McpServerRecord {
    /// The URL with its user info and query values replaced by `***`.
    pub fn shown_url(&self) -> String {
        redact_url(&self.url)
    }

    /// The record as the API and the CLI show it: header values as `***`, the URL redacted.
    pub fn shown(&self) -> Value {
        let headers: serde_json::Map<String, Value> =
            self.headers.iter().map(|h| (h.name.clone(), json!(REDACTED))).collect();
        let mut v = json!({
            "object": "mcp_server",
            "name": self.name,
            "transport": self.transport,
            "description": self.description,
            "created_at_ms": self.created_at_ms,
        });
        match self.transport {
            McpTransport::Http => {
                v["url"] = json!(self.shown_url());
                v["headers"] = Value::Object(headers);
            }
            McpTransport::Stdio => v["command"] = json!(self.command.join(" ")),
        }
        v
    }

    /// Every secret of the record, longest first (so a secret containing another is
    /// replaced whole).
    pub fn secrets(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for h in &self.headers {
            out.push(h.value.clone());
            // `Bearer TOKEN`: the token alone may be quoted too.
            if let Some((_, token)) = h.value.split_once(' ') {
                out.push(token.trim().to_string());
            }
        }
        out.extend(url_secrets(&self.url));
        // Short values would blank out unrelated text; they are hidden where the record is
        // shown, not searched for in other text.
        out.retain(|s| s.len() >= 4);
        out.sort_by_key(|s| std::cmp::Reverse(s.len()));
        out.dedup();
        out
    }

    /// `text` with the raw URL replaced by the redacted one and every secret by `***`.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = if self.url.is_empty() { text.to_string() } else { text.replace(&self.url, &self.shown_url()) };
        for s in self.secrets() {
            out = out.replace(&s, REDACTED);
            // Transports quote URLs percent-decoded or encoded; both forms go.
            let decoded = percent_decode(&s);
            if decoded != s && decoded.len() >= 4 {
                out = out.replace(&decoded, REDACTED);
            }
        }
        out
    }
}

/// The secrets a URL carries: its user info (user and password) and its query values.
fn url_secrets(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Some((_, rest)) = url.split_once("://") else { return out };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        out.push(userinfo.to_string());
        out.extend(userinfo.split(':').filter(|p| !p.is_empty()).map(str::to_string));
    }
    if let Some((_, query)) = rest.split_once('?') {
        let query = query.split('#').next().unwrap_or("");
        for pair in query.split('&') {
            if let Some((_, v)) = pair.split_once('=') {
                out.push(v.to_string());
            }
        }
    }
    out
}

/// A URL with its user info and every query value replaced by `***`
/// (`https://u:p@h/mcp?token=x&v=2` → `https://***@h/mcp?token=***&v=***`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => format!("{REDACTED}@{host}"),
        None => authority.to_string(),
    };
    let (path, fragment) = match tail.split_once('#') {
        Some((p, f)) => (p, Some(f)),
        None => (tail, None),
    };
    let shown_tail = match path.split_once('?') {
        Some((p, query)) => {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) => format!("{k}={REDACTED}"),
                    None => pair.to_string(),
                })
                .collect();
            format!("{p}?{}", pairs.join("&"))
        }
        None => path.to_string(),
    };
    match fragment {
        Some(f) => format!("{scheme}://{host}{shown_tail}#{f}"),
        None => format!("{scheme}://{host}{shown_tail}"),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() && s.is_char_boundary(i + 3) {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(url: &str, headers: &[(&str, &str)]) -> McpServerRecord {
        McpServerRecord {
            name: "tools".into(),
            transport: McpTransport::Http,
            url: url.into(),
            headers: headers.iter().map(|(n, v)| McpHeader { name: n.to_string(), value: v.to_string() }).collect(),
            command: Vec::new(),
            description: String::new(),
            created_at_ms: 1,
        }
    }

    #[test]
    fn urls_lose_user_info_and_query_values() {
        assert_eq!(redact_url("http://127.0.0.1:9000/mcp"), "http://127.0.0.1:9000/mcp");
        assert_eq!(
            redact_url("https://alice:s3cret@api.example.com/mcp?token=abc&v=2#top"),
            "https://***@api.example.com/mcp?token=***&v=***#top"
        );
        assert_eq!(redact_url("https://h/mcp?flag"), "https://h/mcp?flag");
        assert_eq!(redact_url("https://h?k=v"), "https://h?k=***");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn shown_records_hold_no_secret() {
        let r = http("https://bob:pa55word@h.example/mcp?key=k3y-value", &[("Authorization", "Bearer sk-very-secret")]);
        let shown = r.shown().to_string();
        for secret in ["pa55word", "bob", "k3y-value", "sk-very-secret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert_eq!(r.shown()["headers"]["Authorization"], "***");
        assert_eq!(r.shown()["url"], "https://***@h.example/mcp?key=***");
    }

    #[test]
    fn scrub_takes_secrets_out_of_any_text() {
        let r = http("http://h:1/mcp?token=abcd%2Fef", &[("Authorization", "Bearer sk-very-secret"), ("X-K", "ab")]);
        let err = "error sending request for url (http://h:1/mcp?token=abcd%2Fef): got sk-very-secret and abcd/ef";
        let s = r.scrub(err);
        assert_eq!(s, "error sending request for url (http://h:1/mcp?token=***): got *** and ***");
        // A two-character value is hidden where shown, not searched for in text.
        assert_eq!(r.scrub("about"), "about");
    }

    #[test]
    fn servers_are_added_once_and_removed() {
        use crate::state::{apply, ClusterState, Command, Outcome};
        let mut state = ClusterState::default();
        let add = Command::AddMcpServer(Box::new(http("http://h/mcp", &[])));
        assert_eq!(apply(&mut state, &add), Outcome::Applied);
        assert!(matches!(apply(&mut state, &add), Outcome::Rejected(_)));
        let rm = Command::RemoveMcpServer { name: "tools".into() };
        assert_eq!(apply(&mut state, &rm), Outcome::Applied);
        assert!(matches!(apply(&mut state, &rm), Outcome::Rejected(_)));
        assert!(state.mcp_servers.is_empty());
    }
}
