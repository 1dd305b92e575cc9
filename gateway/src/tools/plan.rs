//! What a chat request's `tools`, `tool_choice`, `parallel_tool_calls` and `response_format`
//! ask for, checked, and how the answer is produced and read: the tools shown to the model,
//! the text the answer starts with, the constraint on generation, and whether calls are read
//! from the answer. A pure function of the request's fields.
//!
//! | request | the model sees | generation | the answer |
//! |---|---|---|---|
//! | no tools, or `tool_choice: "none"` | no tools | free | text |
//! | `auto` (the default with tools) | the tools | free; after `<tool_call>` constrained to the strict tools' schemas when any tool is strict | text and the calls that parse |
//! | `required`, or a named function | the tools (or the one named) | starts inside a call, constrained to the call's schema, ends after it | one call |
//! | `response_format` `json_object` / `json_schema` | no change | constrained to the schema | the JSON text |

use serde_json::{json, Value};
use shoal_protocol::OutputConstraint;

use super::schema::{call_schema, check_strict, loosen, CallTarget};

/// The most tools one request may offer.
pub const MAX_TOOLS: usize = 128;

/// A tool the request offers.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    /// The schema of its arguments (an object schema).
    pub parameters: Value,
    pub strict: bool,
    /// The request's entry as it came (what the chat template renders).
    pub entry: Value,
}

/// How the answer is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// Plain text (or the JSON text of a structured answer).
    Text,
    /// Calls are read from the answer (`names`: the tools it may call).
    Calls {
        names: Vec<String>,
        /// The answer starts inside a call (its opening is in the prompt).
        forced: bool,
        /// At most one call (`parallel_tool_calls: false`).
        single: bool,
    },
}

/// How to produce and read the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolPlan {
    /// The tools shown to the model (OpenAI entries); empty: none.
    pub shown: Vec<Value>,
    /// Appended to the rendered prompt.
    pub answer_prefix: String,
    pub constraint: Option<OutputConstraint>,
    pub reading: Reading,
}

impl ToolPlan {
    /// Whether the request is a plain chat (no tools shown, nothing constrained).
    pub fn is_plain(&self) -> bool {
        self.shown.is_empty() && self.constraint.is_none() && self.answer_prefix.is_empty()
    }
}

/// Plans a request; the error is the 400's message.
pub fn plan(
    tools: Option<&Value>,
    tool_choice: Option<&Value>,
    parallel_tool_calls: Option<bool>,
    response_format: Option<&Value>,
) -> Result<ToolPlan, String> {
    let tools = read_tools(tools)?;
    let structured = read_response_format(response_format)?;
    let choice = read_choice(tool_choice, &tools)?;
    let single = parallel_tool_calls == Some(false);
    let plain = ToolPlan { shown: Vec::new(), answer_prefix: String::new(), constraint: None, reading: Reading::Text };
    if tools.is_empty() || choice == Choice::None {
        return Ok(match structured {
            Some(schema) => ToolPlan {
                constraint: Some(OutputConstraint { schema: schema.to_string(), trigger: String::new() }),
                ..plain
            },
            None => plain,
        });
    }
    if structured.is_some() {
        return Err("response_format with tools is not supported: set tool_choice to \"none\" for a structured \
                    answer, or leave response_format out to call tools"
            .into());
    }
    let names: Vec<String> = tools.iter().map(|t| t.name.clone()).collect();
    let shown: Vec<Value> = tools.iter().map(|t| t.entry.clone()).collect();
    if choice == Choice::Auto {
        let constraint = if tools.iter().any(|t| t.strict) {
            let schema = calls_schema(&tools, &names)?;
            Some(OutputConstraint { schema: schema.to_string(), trigger: "<tool_call>".into() })
        } else {
            None
        };
        let reading = Reading::Calls { names, forced: false, single };
        return Ok(ToolPlan { shown, answer_prefix: String::new(), constraint, reading });
    }
    // `required` or a named function: one call, made from the first token on.
    let callable: Vec<String> = match choice {
        Choice::Named(n) => vec![n],
        _ => names,
    };
    let schema = calls_schema(&tools, &callable)?;
    Ok(ToolPlan {
        shown,
        answer_prefix: "<tool_call>\n".into(),
        constraint: Some(OutputConstraint { schema: schema.to_string(), trigger: String::new() }),
        reading: Reading::Calls { names: callable, forced: true, single: true },
    })
}

/// The schema of one call to any tool named in `callable` (strict tools exactly, the others
/// with their structure only).
fn calls_schema(tools: &[Tool], callable: &[String]) -> Result<Value, String> {
    let params: Vec<(String, Value)> = tools
        .iter()
        .filter(|t| callable.contains(&t.name))
        .map(|t| {
            let p = if t.strict { t.parameters.clone() } else { loosen(&t.parameters, json!({"type": "object"})) };
            (t.name.clone(), p)
        })
        .collect();
    let targets: Vec<CallTarget<'_>> =
        params.iter().map(|(name, parameters)| CallTarget { name, parameters }).collect();
    let schema = call_schema(&targets);
    check_strict(&schema).map_err(|e| format!("the tools' parameters cannot be enforced: {e}"))?;
    Ok(schema)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Choice {
    None,
    Auto,
    Required,
    Named(String),
}

fn read_choice(choice: Option<&Value>, tools: &[Tool]) -> Result<Choice, String> {
    let choice = match choice {
        None | Some(Value::Null) => return Ok(if tools.is_empty() { Choice::None } else { Choice::Auto }),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Choice::None,
            "auto" => Choice::Auto,
            "required" => Choice::Required,
            other => return Err(format!("tool_choice must be none, auto, required or a function, got {other:?}")),
        },
        Some(v @ Value::Object(_)) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| v.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or("tool_choice must be {\"type\": \"function\", \"function\": {\"name\": ...}}")?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(format!("tool_choice names the function {name:?}, which is not among the tools"));
            }
            Choice::Named(name.to_string())
        }
        Some(_) => return Err("tool_choice must be a string or an object".into()),
    };
    if tools.is_empty() && matches!(choice, Choice::Required | Choice::Named(_)) {
        return Err("tool_choice requires tools".into());
    }
    Ok(choice)
}

fn read_tools(tools: Option<&Value>) -> Result<Vec<Tool>, String> {
    let list = match tools {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err("tools must be a list".into()),
    };
    if list.len() > MAX_TOOLS {
        return Err(format!("tools holds {} entries; at most {MAX_TOOLS}", list.len()));
    }
    let mut out: Vec<Tool> = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        if entry.get("type").and_then(Value::as_str) != Some("function") {
            return Err(format!("tools[{i}].type must be \"function\""));
        }
        let f = entry.get("function").filter(|f| f.is_object()).ok_or(format!("tools[{i}].function is missing"))?;
        let name = f.get("name").and_then(Value::as_str).ok_or(format!("tools[{i}].function.name is missing"))?;
        if name.is_empty()
            || name.len() > 64
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "tools[{i}].function.name {name:?} must be 1 to 64 letters, digits, underscores or dashes"
            ));
        }
        if out.iter().any(|t| t.name == name) {
            return Err(format!("tools[{i}]: the function name {name:?} is used twice"));
        }
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => return Err(format!("tools[{i}].function.parameters must be a JSON Schema object")),
        };
        if parameters.get("type").is_some_and(|t| t != "object") {
            return Err(format!("tools[{i}].function.parameters must describe an object (\"type\": \"object\")"));
        }
        let strict = f.get("strict").and_then(Value::as_bool).unwrap_or(false);
        if strict {
            check_strict(&parameters).map_err(|e| format!("tools[{i}] ({name}) is strict, but {e}"))?;
        }
        out.push(Tool { name: name.to_string(), parameters, strict, entry: entry.clone() });
    }
    Ok(out)
}

/// The schema a structured answer must satisfy (`None`: free text).
fn read_response_format(rf: Option<&Value>) -> Result<Option<Value>, String> {
    let Some(rf) = rf.filter(|v| !v.is_null()) else { return Ok(None) };
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "object"}))),
        Some("json_schema") => {
            let js = rf.get("json_schema").ok_or("response_format.json_schema is missing")?;
            let schema = js.get("schema").ok_or("response_format.json_schema.schema is missing")?;
            if !schema.is_object() {
                return Err("response_format.json_schema.schema must be a JSON Schema object".into());
            }
            if js.get("strict").and_then(Value::as_bool).unwrap_or(false) {
                check_strict(schema).map_err(|e| format!("response_format.json_schema: {e}"))?;
                Ok(Some(schema.clone()))
            } else {
                Ok(Some(loosen(schema, json!({}))))
            }
        }
        _ => Err("response_format.type must be text, json_object or json_schema".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather(strict: bool) -> Value {
        json!({"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "strict": strict,
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
    }

    fn add() -> Value {
        json!({"type": "function", "function": {"name": "add",
            "parameters": {"type": "object", "properties": {"a": {"type": "number", "minimum": 0}, "b": {"type": "number"}}}}})
    }

    fn tools() -> Value {
        json!([weather(false), add()])
    }

    #[test]
    fn without_tools_or_with_none_the_answer_is_plain_text() {
        assert!(plan(None, None, None, None).expect("ok").is_plain());
        let p = plan(Some(&tools()), Some(&json!("none")), None, None).expect("ok");
        assert!(p.is_plain(), "none shows no tools and reads no calls: {p:?}");
    }

    #[test]
    fn auto_shows_the_tools_and_reads_calls_unconstrained_unless_a_tool_is_strict() {
        let p = plan(Some(&tools()), None, None, None).expect("ok");
        assert_eq!(p.shown.len(), 2);
        assert!(p.constraint.is_none() && p.answer_prefix.is_empty());
        assert_eq!(
            p.reading,
            Reading::Calls { names: vec!["get_weather".into(), "add".into()], forced: false, single: false }
        );
        let strict = json!([weather(true), add()]);
        let p = plan(Some(&strict), Some(&json!("auto")), Some(false), None).expect("ok");
        let c = p.constraint.expect("constrained after the trigger");
        assert_eq!(c.trigger, "<tool_call>");
        assert!(c.schema.contains("get_weather") && c.schema.contains("\"add\""));
        assert!(matches!(p.reading, Reading::Calls { single: true, .. }));
    }

    #[test]
    fn required_and_named_choices_start_inside_a_constrained_call() {
        let p = plan(Some(&tools()), Some(&json!("required")), None, None).expect("ok");
        assert_eq!(p.answer_prefix, "<tool_call>\n");
        let c = p.constraint.expect("constrained");
        assert!(c.trigger.is_empty());
        assert!(!c.schema.contains("minimum"), "a non-strict tool is enforced by structure only: {}", c.schema);
        let named = json!({"type": "function", "function": {"name": "add"}});
        let p = plan(Some(&tools()), Some(&named), None, None).expect("ok");
        assert_eq!(p.reading, Reading::Calls { names: vec!["add".into()], forced: true, single: true });
        assert!(!p.constraint.expect("c").schema.contains("get_weather"), "only the named function");
    }

    #[test]
    fn mistakes_are_refused_with_what_is_wrong() {
        let cases: Vec<(Value, Option<Value>, Option<Value>, &str)> = vec![
            (tools(), Some(json!({"type": "function", "function": {"name": "launch"}})), None, "launch"),
            (tools(), Some(json!("sometimes")), None, "tool_choice"),
            (json!([]), Some(json!("required")), None, "requires tools"),
            (json!([{"type": "function", "function": {"name": "a b"}}]), None, None, "a b"),
            (json!([weather(false), weather(false)]), None, None, "twice"),
            (json!([{"type": "retrieval"}]), None, None, "function"),
            (
                json!([{"type": "function", "function": {"name": "f", "strict": true,
                "parameters": {"type": "object", "properties": {"d": {"type": "string", "format": "date"}}}}}]),
                None,
                None,
                "format",
            ),
            (
                json!([]),
                None,
                Some(json!({"type": "json_schema", "json_schema": {"name": "x", "strict": true,
                "schema": {"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 2}}}}})),
                "multipleOf",
            ),
            (json!([]), None, Some(json!({"type": "yaml"})), "response_format"),
            (tools(), None, Some(json!({"type": "json_object"})), "response_format"),
        ];
        for (tools, choice, rf, needle) in cases {
            let err = plan(Some(&tools), choice.as_ref(), None, rf.as_ref()).expect_err(needle);
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn structured_answers_are_constrained_to_their_schema() {
        let p = plan(None, None, None, Some(&json!({"type": "json_object"}))).expect("ok");
        assert_eq!(p.constraint.expect("c").schema, r#"{"type":"object"}"#);
        let rf = json!({"type": "json_schema", "json_schema": {"name": "p", "strict": false,
            "schema": {"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 2}}}}});
        let p = plan(None, None, None, Some(&rf)).expect("non-strict schemas are loosened");
        assert!(!p.constraint.expect("c").schema.contains("multipleOf"));
        assert!(plan(None, None, None, Some(&json!({"type": "text"}))).expect("ok").is_plain());
    }
}
