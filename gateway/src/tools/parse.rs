//! Reading tool calls out of generated text, as it streams.
//!
//! Models write a call as `<tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>`
//! (Qwen2.5's native syntax, and the syntax Shoal's generic tool prompt asks for). The parser
//! passes text on as soon as it cannot be the start of a call, holds a block until it closes,
//! and then gives either a call (the JSON parses, the name is one of the tools, the arguments
//! are an object) or, when it does not parse, the block's text unchanged: a call that does
//! not parse is content, never an error. Streaming and whole answers go through the same
//! parser, so both give the same calls.
//!
//! Small models often write the call's JSON without the tags, or in a ```` ```json ```` block.
//! An answer that is, as a whole, one JSON object (fenced or not) naming a tool with object
//! arguments is read as that call: an answer starting with `{` or ```` ```json ```` is
//! therefore held until it ends.

use serde_json::Value;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// A call read from the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCall {
    /// Its position among the answer's calls (OpenAI's `index`).
    pub index: usize,
    /// `call_` and 24 random characters: never empty, unique per call.
    pub id: String,
    pub name: String,
    /// The arguments as compact JSON text (an object).
    pub arguments: String,
}

/// What the parser gives for a piece of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Call(ParsedCall),
}

/// Reads calls from an answer as it arrives.
#[derive(Debug)]
pub struct CallParser {
    names: Vec<String>,
    /// Keep only the first call (OpenAI `parallel_tool_calls: false`).
    single: bool,
    in_call: bool,
    /// Text not given out yet: a possible start of `<tool_call>`, or a block being read.
    held: String,
    /// Whitespace held back: given out only when more text follows (none around calls).
    blank: String,
    calls: usize,
    /// What the answer's start said: `None` before it is known, `Some(true)` when it is `{`
    /// or ```` ```json ```` (the answer may be a bare call, held to the end).
    bare: Option<bool>,
}

impl CallParser {
    /// A parser for calls to `names`. `in_call`: the answer starts inside a call (its opening
    /// was written into the prompt, as when a call is required).
    pub fn new(names: Vec<String>, single: bool, in_call: bool) -> CallParser {
        let bare = if in_call { Some(false) } else { None };
        CallParser { names, single, in_call, held: String::new(), blank: String::new(), calls: 0, bare }
    }

    /// How many calls were given out.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Reads more of the answer.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.held.push_str(text);
        let mut out = Vec::new();
        if self.bare.is_none() {
            let start = self.held.trim_start();
            if start.is_empty() || (FENCE.starts_with(start) && start.len() < FENCE.len()) {
                return out;
            }
            self.bare = Some(start.starts_with('{') || start.starts_with(FENCE));
        }
        if self.bare == Some(true) {
            return out;
        }
        loop {
            if self.in_call {
                let Some(end) = self.held.find(CLOSE) else { break };
                let body: String = self.held[..end].to_string();
                self.held.drain(..end + CLOSE.len());
                self.in_call = false;
                self.block(&body, true, &mut out);
            } else {
                match self.held.find(OPEN) {
                    Some(at) => {
                        let before: String = self.held[..at].to_string();
                        self.held.drain(..at + OPEN.len());
                        self.text(&before, &mut out);
                        self.in_call = true;
                    }
                    None => {
                        // Give out all but a tail that could begin `<tool_call>`.
                        let keep = partial_prefix_len(&self.held, OPEN);
                        let cut = self.held.len() - keep;
                        let ready: String = self.held[..cut].to_string();
                        self.held.drain(..cut);
                        self.text(&ready, &mut out);
                        break;
                    }
                }
            }
        }
        out
    }

    /// The answer ended: an unclosed block is read as it is, held text is given out.
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        if self.bare == Some(true) {
            self.bare = Some(false);
            if let Some(calls) = self.read_bare_calls(unfenced(&self.held)) {
                self.held.clear();
                for (name, arguments) in calls {
                    out.push(Piece::Call(ParsedCall { index: self.calls, id: call_id(), name, arguments }));
                    self.calls += 1;
                }
                return out;
            }
            // Not a bare call: read it as any answer.
            let held = std::mem::take(&mut self.held);
            out = self.push(&held);
        }
        let rest = std::mem::take(&mut self.held);
        if self.in_call {
            self.in_call = false;
            self.block(&rest, false, &mut out);
        } else {
            self.text(&rest, &mut out);
        }
        if self.calls == 0 && !self.blank.is_empty() {
            out.push(Piece::Text(std::mem::take(&mut self.blank)));
        }
        out
    }

    fn text(&mut self, text: &str, out: &mut Vec<Piece>) {
        if text.is_empty() {
            return;
        }
        if text.trim().is_empty() {
            self.blank.push_str(text);
            return;
        }
        let mut t = std::mem::take(&mut self.blank);
        if self.calls > 0 {
            // Text after a call starts without the blank between.
            t.clear();
        }
        t.push_str(text);
        match out.last_mut() {
            Some(Piece::Text(prev)) => prev.push_str(&t),
            _ => out.push(Piece::Text(t)),
        }
    }

    fn block(&mut self, body: &str, closed: bool, out: &mut Vec<Piece>) {
        match self.read_call(body) {
            Some((name, arguments)) => {
                self.blank.clear();
                if self.single && self.calls > 0 {
                    tracing::debug!(name, "a second call with parallel_tool_calls off is dropped");
                    return;
                }
                out.push(Piece::Call(ParsedCall { index: self.calls, id: call_id(), name, arguments }));
                self.calls += 1;
            }
            None => {
                let raw = format!("{OPEN}{body}{}", if closed { CLOSE } else { "" });
                self.text(&raw, out);
            }
        }
    }

    /// An answer that is nothing but calls written as bare JSON objects (one, or several one
    /// after the other, as small models write parallel calls; a last one cut off by the
    /// token limit is dropped): their names and arguments. `None` when anything else is in
    /// it.
    fn read_bare_calls(&self, text: &str) -> Option<Vec<(String, String)>> {
        let mut calls = Vec::new();
        for v in serde_json::Deserializer::from_str(text.trim()).into_iter::<Value>() {
            match v {
                Ok(v) => calls.push(self.call_of(&v)?),
                Err(e) if e.is_eof() && !calls.is_empty() => break,
                Err(_) => return None,
            }
        }
        if calls.is_empty() {
            return None;
        }
        if self.single {
            calls.truncate(1);
        }
        Some(calls)
    }

    /// The name and compact arguments of a block's JSON, when it is a call to a known tool.
    fn read_call(&self, body: &str) -> Option<(String, String)> {
        self.call_of(&serde_json::from_str(body.trim()).ok()?)
    }

    fn call_of(&self, v: &Value) -> Option<(String, String)> {
        let name = v.get("name")?.as_str()?.to_string();
        if !self.names.contains(&name) {
            return None;
        }
        let args = match v.get("arguments").or_else(|| v.get("parameters")) {
            None => Value::Object(Default::default()),
            // Some models write the arguments as JSON text.
            Some(Value::String(s)) => serde_json::from_str(s).ok()?,
            Some(a) => a.clone(),
        };
        args.is_object().then(|| (name, args.to_string()))
    }
}

/// The opening of a fenced JSON block.
const FENCE: &str = "```json";

/// The text inside a ```` ```json ... ``` ```` block that is the whole of `s`; `s` otherwise.
fn unfenced(s: &str) -> &str {
    let t = s.trim();
    match t.strip_prefix(FENCE).and_then(|rest| rest.strip_suffix("```")) {
        Some(inner) => inner,
        None => s,
    }
}

/// The length of the longest tail of `s` that is a proper prefix of `pattern`.
fn partial_prefix_len(s: &str, pattern: &str) -> usize {
    (1..pattern.len().min(s.len() + 1))
        .rev()
        .find(|&n| s.is_char_boundary(s.len() - n) && pattern.starts_with(&s[s.len() - n..]))
        .unwrap_or(0)
}

/// A fresh call id.
pub fn call_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..24).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
    format!("call_{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser() -> CallParser {
        CallParser::new(vec!["get_weather".into(), "add".into()], false, false)
    }

    /// Runs `chunks` through a parser; the text and the calls (name, arguments).
    fn run(mut p: CallParser, chunks: &[&str]) -> (String, Vec<(String, String)>) {
        let mut pieces = Vec::new();
        for c in chunks {
            pieces.extend(p.push(c));
        }
        pieces.extend(p.finish());
        let mut text = String::new();
        let mut calls = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Text(t) => text.push_str(&t),
                Piece::Call(c) => {
                    assert!(c.id.starts_with("call_") && c.id.len() == 29, "{}", c.id);
                    assert_eq!(c.index, calls.len());
                    calls.push((c.name, c.arguments));
                }
            }
        }
        (text, calls)
    }

    const TWO_CALLS: &str = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>";

    #[test]
    fn calls_are_read_whole_or_in_any_chunking() {
        let whole = run(parser(), &[TWO_CALLS]);
        assert_eq!(whole.0, "");
        assert_eq!(
            whole.1,
            vec![("get_weather".into(), r#"{"city":"Paris"}"#.into()), ("add".into(), r#"{"a":1,"b":2}"#.into())]
        );
        for size in [1, 2, 3, 5, 7, 11] {
            let chunks: Vec<String> =
                TWO_CALLS.as_bytes().chunks(size).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
            let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
            assert_eq!(run(parser(), &refs), whole, "chunks of {size}");
        }
    }

    #[test]
    fn plain_text_passes_through_and_is_not_held_longer_than_needed() {
        let mut p = parser();
        assert_eq!(p.push("Hello <tool"), vec![Piece::Text("Hello ".into())]);
        assert_eq!(p.push("box> and a < sign"), vec![Piece::Text("<toolbox> and a < sign".into())]);
        assert_eq!(p.finish(), vec![]);
        assert_eq!(run(parser(), &["Paris is the capital.\n"]).0, "Paris is the capital.\n");
    }

    #[test]
    fn a_call_that_does_not_parse_is_content() {
        let bad = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": </tool_call>";
        assert_eq!(run(parser(), &[bad]), (bad.to_string(), vec![]));
        let unknown = "<tool_call>{\"name\": \"launch\", \"arguments\": {}}</tool_call>";
        assert_eq!(run(parser(), &[unknown]).0, unknown);
        let not_object = "<tool_call>{\"name\": \"add\", \"arguments\": [1, 2]}</tool_call>";
        assert_eq!(run(parser(), &[not_object]).1, vec![]);
    }

    #[test]
    fn text_around_calls_is_kept_and_blanks_between_them_dropped() {
        let (text, calls) = run(parser(), &["Let me check.\n", TWO_CALLS, "\n"]);
        assert_eq!(text, "Let me check.\n");
        assert_eq!(calls.len(), 2);
    }

    #[test]
    fn an_unclosed_call_at_the_end_is_still_read() {
        let forced = CallParser::new(vec!["add".into()], false, true);
        let (text, calls) = run(forced, &["{\"name\": \"add\", \"arguments\": {\"a\": 1}}"]);
        assert_eq!((text.as_str(), calls), ("", vec![("add".into(), r#"{"a":1}"#.into())]));
    }

    #[test]
    fn arguments_written_as_text_are_read_and_single_mode_keeps_one_call() {
        let s = "<tool_call>{\"name\": \"add\", \"arguments\": \"{\\\"a\\\": 1}\"}</tool_call>";
        assert_eq!(run(parser(), &[s]).1, vec![("add".into(), r#"{"a":1}"#.into())]);
        let single = CallParser::new(vec!["get_weather".into(), "add".into()], true, false);
        assert_eq!(run(single, &[TWO_CALLS]).1.len(), 1);
    }

    #[test]
    fn a_bare_call_is_read_and_other_json_stays_content() {
        let bare = "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}";
        let whole = run(parser(), &[bare]);
        assert_eq!(whole, (String::new(), vec![("get_weather".into(), r#"{"city":"Paris"}"#.into())]));
        let chunks: Vec<String> = bare.chars().map(String::from).collect();
        let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
        assert_eq!(run(parser(), &refs), whole, "streamed a character at a time");
        let mut p = parser();
        assert_eq!(p.push("  {\"name\": "), vec![], "held until the answer ends");
        let other = "{\"name\": \"Ada\", \"age\": 36}";
        assert_eq!(run(parser(), &[other]), (other.to_string(), vec![]));
        let fenced = "```json\n{\n  \"name\": \"get_weather\",\n  \"arguments\": {\"city\": \"Paris\"}\n}\n```";
        assert_eq!(run(parser(), &[fenced]).1, whole.1, "a fenced bare call");
        let code = "```python\nprint(1)\n```";
        let mut p = parser();
        assert_eq!(p.push(code), vec![Piece::Text(code.into())], "other code blocks stream at once");
        let then_tagged = format!("{{}} {TWO_CALLS}");
        let (text, calls) = run(parser(), &[&then_tagged]);
        assert_eq!((text.as_str(), calls.len()), ("{} ", 2), "tagged calls after other JSON are still read");
    }

    #[test]
    fn bare_calls_one_after_the_other_are_read_as_parallel_calls() {
        let two = "{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}";
        let (text, calls) = run(parser(), &[two]);
        assert_eq!(text, "");
        assert_eq!(calls.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), ["add", "get_weather"]);
        // The last one cut off by the token limit is dropped; the complete ones stay.
        let cut = format!("{two}\n{{\"name\": \"add\", \"arguments\": {{\"a\": 4");
        assert_eq!(run(parser(), &[&cut]).1.len(), 2);
        // One call only when parallel calls are off.
        assert_eq!(run(CallParser::new(vec!["get_weather".into(), "add".into()], true, false), &[two]).1.len(), 1);
        // Anything else among them: the whole answer is content.
        let mixed = format!("{two}\n{{\"name\": \"Ada\"}}");
        assert_eq!(run(parser(), &[&mixed]), (mixed.clone(), vec![]));
    }

    #[test]
    fn ids_are_unique() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| call_id()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
