//! Prompt templates: named, versioned message templates that the gateway serves as MCP
//! prompts (`prompts/list`, `prompts/get`) and renders over HTTP. A template is one user
//! message (`template`) or a list of `messages` (roles `user` and `assistant`, as MCP
//! prompts have), each a minijinja template over the prompt's arguments.
//!
//! Arguments are declared (name, description, required), or, when none are declared, are
//! the variables the templates use, all required. Rendering refuses a missing required
//! argument and an argument the prompt does not take.

use std::collections::BTreeSet;

use minijinja::{Environment, UndefinedBehavior};

use crate::expr::one_line;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The most bytes of a prompt definition.
pub const MAX_PROMPT_BYTES: usize = 64 * 1024;
/// The most arguments and messages of a prompt.
pub const MAX_ARGUMENTS: usize = 32;
pub const MAX_MESSAGES: usize = 32;
/// The most characters of a rendered prompt.
const MAX_RENDERED_CHARS: usize = 256 * 1024;
/// Instructions one rendering may spend.
const FUEL: u64 = 200_000;

/// A prompt template as users write it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PromptTemplate {
    /// Lowercase letters, digits, `-` and `_`.
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The prompt as one user message (or give `messages`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<PromptMessage>,
    /// The arguments it takes (default: the templates' variables, all required).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arguments: Vec<PromptArgument>,
}

/// One message of a prompt (`content` is a template).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PromptMessage {
    pub role: String,
    pub content: String,
}

/// One argument of a prompt.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PromptArgument {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default = "yes")]
    pub required: bool,
}

fn yes() -> bool {
    true
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A declared optional argument left out is empty, not an error.
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_fuel(Some(FUEL));
    env
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
}

impl PromptTemplate {
    /// The messages as `(role, template)`.
    pub fn message_templates(&self) -> Vec<(&str, &str)> {
        match &self.template {
            Some(t) => vec![("user", t.as_str())],
            None => self.messages.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect(),
        }
    }

    /// Every problem of the definition (empty: it is good).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !is_name(&self.name) {
            out.push(format!(
                "name {:?}: use 1 to 64 lowercase letters, digits, '-' and '_', starting with a letter or digit",
                self.name
            ));
        }
        match (&self.template, self.messages.is_empty()) {
            (Some(_), false) => out.push("give either template or messages, not both".into()),
            (None, true) => out.push("give a template (one user message) or messages".into()),
            _ => {}
        }
        if self.messages.len() > MAX_MESSAGES {
            out.push(format!("at most {MAX_MESSAGES} messages"));
        }
        for (i, m) in self.messages.iter().enumerate() {
            if m.role != "user" && m.role != "assistant" {
                out.push(format!("messages[{i}].role {:?}: must be user or assistant", m.role));
            }
        }
        let env = environment();
        for (i, (_, t)) in self.message_templates().into_iter().enumerate() {
            if let Err(e) = env.template_from_str(t) {
                out.push(format!("message {i} does not parse: {}", one_line(&e)));
            }
        }
        if self.arguments.len() > MAX_ARGUMENTS {
            out.push(format!("at most {MAX_ARGUMENTS} arguments"));
        }
        let mut seen = BTreeSet::new();
        for a in &self.arguments {
            if !is_identifier(&a.name) {
                out.push(format!("argument {:?}: use letters, digits and '_', not starting with a digit", a.name));
            }
            if !seen.insert(a.name.as_str()) {
                out.push(format!("argument {:?} is declared twice", a.name));
            }
        }
        if out.is_empty() && !self.arguments.is_empty() {
            for v in self.variables() {
                if !seen.contains(v.as_str()) {
                    out.push(format!("the template uses `{v}`, which is not among the declared arguments"));
                }
            }
        }
        out
    }

    /// The variables the templates use.
    pub fn variables(&self) -> BTreeSet<String> {
        let env = environment();
        let mut out = BTreeSet::new();
        for (_, t) in self.message_templates() {
            if let Ok(tmpl) = env.template_from_str(t) {
                out.extend(tmpl.undeclared_variables(false));
            }
        }
        out
    }

    /// The arguments it takes: the declared ones, or its variables (all required).
    pub fn effective_arguments(&self) -> Vec<PromptArgument> {
        if !self.arguments.is_empty() {
            return self.arguments.clone();
        }
        self.variables()
            .into_iter()
            .map(|name| PromptArgument { name, description: String::new(), required: true })
            .collect()
    }

    /// The messages rendered with `args` (string values; other JSON values as JSON text).
    pub fn render(&self, args: &Map<String, Value>) -> Result<Vec<(String, String)>, String> {
        let declared = self.effective_arguments();
        for a in declared.iter().filter(|a| a.required) {
            if !args.contains_key(&a.name) {
                return Err(format!("missing argument '{}' of prompt '{}'", a.name, self.name));
            }
        }
        if let Some(extra) = args.keys().find(|k| !declared.iter().any(|a| &a.name == *k)) {
            let names: Vec<&str> = declared.iter().map(|a| a.name.as_str()).collect();
            return Err(format!("prompt '{}' takes no argument '{extra}' (it takes: {})", self.name, names.join(", ")));
        }
        let env = environment();
        let scope = minijinja::Value::from(minijinja::value::Serde(Value::Object(args.clone())));
        let mut out = Vec::new();
        let mut total = 0usize;
        for (role, t) in self.message_templates() {
            let text = env.render_str(t, scope.clone()).map_err(|e| one_line(&e))?;
            total += text.chars().count();
            if total > MAX_RENDERED_CHARS {
                return Err(format!("the rendered prompt is over {MAX_RENDERED_CHARS} characters"));
            }
            out.push((role.to_string(), text));
        }
        Ok(out)
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// Reads a prompt definition (YAML or JSON) and checks it: every problem, or the prompt.
pub fn parse_prompt(text: &str) -> Result<PromptTemplate, Vec<String>> {
    if text.len() > MAX_PROMPT_BYTES {
        return Err(vec![format!("a prompt definition is at most {} KiB", MAX_PROMPT_BYTES / 1024)]);
    }
    let value = crate::validate::parse(text).map_err(|p| vec![p.message])?;
    let p: PromptTemplate = serde_json::from_value(value).map_err(|e| vec![e.to_string()])?;
    let problems = p.problems();
    if problems.is_empty() {
        Ok(p)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn arguments_are_the_variables_unless_declared() {
        let p =
            parse_prompt("name: review\ntemplate: \"Review this {{ language }} code:\\n{{ code }}\"").expect("good");
        let names: Vec<String> = p.effective_arguments().into_iter().map(|a| a.name).collect();
        assert_eq!(names, ["code", "language"]);
        let out = p.render(&args(json!({"language": "Rust", "code": "fn main() {}"}))).expect("renders");
        assert_eq!(out, vec![("user".to_string(), "Review this Rust code:\nfn main() {}".to_string())]);
        assert!(p.render(&args(json!({"language": "Rust"}))).expect_err("missing").contains("missing argument 'code'"));
        assert!(p
            .render(&args(json!({"language": "Rust", "code": "x", "tone": "kind"})))
            .expect_err("extra")
            .contains("takes no argument 'tone'"));
    }

    #[test]
    fn declared_optional_arguments_may_be_left_out() {
        let p = parse_prompt(
            r#"{"name": "greet", "messages": [{"role": "user", "content": "Hello {{ who }}{% if mood %}, {{ mood }}{% endif %}"},
                {"role": "assistant", "content": "Hi!"}],
                "arguments": [{"name": "who"}, {"name": "mood", "required": false}]}"#,
        )
        .expect("good");
        let out = p.render(&args(json!({"who": "Ada"}))).expect("renders");
        assert_eq!(out[0].1, "Hello Ada");
        assert_eq!(out[1], ("assistant".to_string(), "Hi!".to_string()));
    }

    #[test]
    fn every_problem_is_named() {
        let problems = parse_prompt(
            r#"{"name": "Bad Name", "template": "{{ x", "messages": [{"role": "system", "content": "y"}],
                "arguments": [{"name": "a"}, {"name": "a"}]}"#,
        )
        .expect_err("bad");
        let all = problems.join("\n");
        for want in [
            "name \"Bad Name\"",
            "either template or messages",
            "must be user or assistant",
            "does not parse",
            "declared twice",
        ] {
            assert!(all.contains(want), "no problem about {want}: {all}");
        }
        let undeclared = parse_prompt("name: p\ntemplate: '{{ a }} {{ b }}'\narguments: [{name: a}]").expect_err("bad");
        assert!(undeclared[0].contains("uses `b`"), "{undeclared:?}");
        assert!(parse_prompt("name: p").expect_err("empty")[0].contains("give a template"));
        assert!(parse_prompt(&"x".repeat(MAX_PROMPT_BYTES + 1)).is_err());
    }

    #[test]
    fn deep_nesting_is_refused_not_a_crash() {
        for doc in ["[".repeat(60_000), format!("name: x\ntemplate: '{}'", "{% if a %}".repeat(10_000))] {
            assert!(parse_prompt(&doc).is_err());
        }
    }

    #[test]
    fn a_template_cannot_loop_forever() {
        let p = parse_prompt(
            "name: spin\ntemplate: '{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}'",
        )
        .expect("parses");
        assert!(p.render(&Map::new()).is_err());
    }
}
