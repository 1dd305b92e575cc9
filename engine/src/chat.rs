//! Chat messages and what the chat template is given: the conversation (with tool calls and
//! tool results) and the tools on offer.
//!
//! A template that knows tools (it reads `tools`, as Qwen2.5's does) gets them and the
//! messages as they are, in the shapes Hugging Face templates expect: `tools` is OpenAI's
//! list of `{"type": "function", "function": {...}}`, an assistant message's `tool_calls` are
//! `{"id", "type": "function", "function": {"name", "arguments"}}` with the arguments as a
//! JSON object, and a `tool` message carries `tool_call_id`. A template that does not know
//! tools gets the same information as text: the tools described in the system message, calls
//! written as `<tool_call>` blocks in the assistant's text, and results as `<tool_response>`
//! blocks in a user message. Either way the model answers calls as
//! `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// The tools an assistant message called.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ChatToolCall>,
    /// For a `tool` message: the call it answers.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tool_call_id: String,
}

/// A tool call made by an assistant message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into(), tool_calls: Vec::new(), tool_call_id: String::new() }
    }
}

/// Whether a chat template reads the `tools` variable.
pub(crate) fn template_knows_tools(src: &str) -> bool {
    src.contains("tools")
}

/// The arguments of a call as a JSON value (an object when they parse, the text otherwise).
fn arguments_value(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::String(arguments.to_string()))
}

/// The messages as the template's `messages` (Hugging Face shapes).
pub(crate) fn template_messages(messages: &[ChatMessage]) -> Vec<Value> {
    messages
        .iter()
        .map(|m| {
            let mut v = json!({"role": m.role, "content": m.content});
            if !m.tool_calls.is_empty() {
                v["tool_calls"] = m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        json!({
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": arguments_value(&c.arguments)},
                        })
                    })
                    .collect();
            }
            if !m.tool_call_id.is_empty() {
                v["tool_call_id"] = json!(m.tool_call_id);
            }
            v
        })
        .collect()
}

/// A JSON value as a template value.
pub(crate) fn template_value(v: &Value) -> minijinja::Value {
    match v {
        Value::Null => minijinja::Value::from(()),
        Value::Bool(b) => minijinja::Value::from(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => minijinja::Value::from(i),
            (None, Some(u)) => minijinja::Value::from(u),
            _ => minijinja::Value::from(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => minijinja::Value::from(s.as_str()),
        Value::Array(items) => minijinja::Value::from(items.iter().map(template_value).collect::<Vec<_>>()),
        Value::Object(map) => minijinja::Value::from(
            map.iter().map(|(k, v)| (k.clone(), template_value(v))).collect::<std::collections::BTreeMap<_, _>>(),
        ),
    }
}

/// One call as the model writes it.
pub(crate) fn call_block(call: &ChatToolCall) -> String {
    let name = Value::String(call.name.clone());
    let arguments = arguments_value(&call.arguments);
    format!("<tool_call>\n{{\"name\": {name}, \"arguments\": {arguments}}}\n</tool_call>")
}

/// The system text that offers `tools` to a model whose template does not know tools.
fn tools_instructions(tools: &[Value]) -> String {
    let mut s = String::from(
        "You can use the tools listed below. Each line between <tools> and </tools> describes one tool \
         as JSON:\n<tools>",
    );
    for t in tools {
        s.push('\n');
        s.push_str(&t.to_string());
    }
    s.push_str(
        "\n</tools>\n\nTo use a tool, reply with a block like this (one block per call), with the tool's \
         name and a JSON object of its arguments:\n<tool_call>\n{\"name\": \"TOOL_NAME\", \"arguments\": {}}\n\
         </tool_call>\nIf no tool is needed, answer normally.",
    );
    s
}

/// The conversation rewritten as plain messages for a template that does not know tools:
/// the tools go into the system message, calls and results become text.
pub(crate) fn messages_without_tool_support(messages: &[ChatMessage], tools: &[Value]) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    if !tools.is_empty() {
        let offer = tools_instructions(tools);
        match messages.first() {
            Some(m) if m.role == "system" => out.push(ChatMessage::new("system", format!("{}\n\n{offer}", m.content))),
            _ => out.push(ChatMessage::new("system", offer)),
        }
    }
    let skip_first = !tools.is_empty() && messages.first().is_some_and(|m| m.role == "system");
    for m in messages.iter().skip(usize::from(skip_first)) {
        match m.role.as_str() {
            "assistant" if !m.tool_calls.is_empty() => {
                let mut text = m.content.clone();
                for c in &m.tool_calls {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&call_block(c));
                }
                out.push(ChatMessage::new("assistant", text));
            }
            "tool" => {
                let block = format!("<tool_response>\n{}\n</tool_response>", m.content);
                // Results of one round of calls go into one user message.
                match out.last_mut() {
                    Some(prev) if prev.role == "user" && prev.content.ends_with("</tool_response>") => {
                        prev.content.push('\n');
                        prev.content.push_str(&block);
                    }
                    _ => out.push(ChatMessage::new("user", block)),
                }
            }
            _ => out.push(ChatMessage::new(m.role.clone(), m.content.clone())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> ChatToolCall {
        ChatToolCall { id: "call_1".into(), name: "get_weather".into(), arguments: r#"{"city":"Paris"}"#.into() }
    }

    #[test]
    fn template_messages_use_hugging_face_shapes() {
        let mut a = ChatMessage::new("assistant", "");
        a.tool_calls.push(call());
        let mut t = ChatMessage::new("tool", "18 C");
        t.tool_call_id = "call_1".into();
        let v = template_messages(&[ChatMessage::new("user", "Weather?"), a, t]);
        assert_eq!(v[0], json!({"role": "user", "content": "Weather?"}));
        assert_eq!(v[1]["tool_calls"][0]["function"]["arguments"], json!({"city": "Paris"}));
        assert_eq!(v[1]["tool_calls"][0]["function"]["name"], json!("get_weather"));
        assert_eq!(v[2]["tool_call_id"], json!("call_1"));
    }

    #[test]
    fn without_tool_support_tools_calls_and_results_become_text() {
        let tools = vec![json!({"type": "function", "function": {"name": "get_weather", "parameters": {}}})];
        let mut a = ChatMessage::new("assistant", "");
        a.tool_calls.push(call());
        let mut t1 = ChatMessage::new("tool", "18 C");
        t1.tool_call_id = "call_1".into();
        let mut t2 = ChatMessage::new("tool", "windy");
        t2.tool_call_id = "call_2".into();
        let msgs = vec![ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Weather?"), a, t1, t2];
        let out = messages_without_tool_support(&msgs, &tools);
        assert_eq!(out.len(), 4, "{out:?}");
        assert!(out[0].content.starts_with("Be brief.") && out[0].content.contains("\"get_weather\""));
        assert_eq!(
            out[2].content,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}\n</tool_call>"
        );
        assert_eq!(out[3].role, "user");
        assert_eq!(out[3].content.matches("<tool_response>").count(), 2, "both results in one message");
        // Without tools and without calls nothing changes.
        let plain = vec![ChatMessage::new("user", "Hi")];
        assert_eq!(messages_without_tool_support(&plain, &[]), plain);
    }
}
