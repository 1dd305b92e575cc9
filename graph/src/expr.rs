//! Expressions and templates over a run's scope (`inputs`, `steps`, `item`, `index`),
//! evaluated with minijinja (fuel-limited, so no definition can loop forever).

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

/// Instructions one evaluation may spend.
const FUEL: u64 = 200_000;

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // `steps.skipped.field` is undefined (falsy), not an error: `a or b` picks the arm
    // that ran.
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    env.set_fuel(Some(FUEL));
    env
}

/// A minijinja error on one line: its kind and detail.
pub(crate) fn one_line(e: &minijinja::Error) -> String {
    let mut s = e.kind().to_string();
    if let Some(d) = e.detail() {
        s.push_str(": ");
        s.push_str(d);
    }
    s
}

/// The value of a bare expression (`steps.route.label == "db"`).
pub fn eval(expr: &str, scope: &Value) -> Result<Value, String> {
    let env = environment();
    let compiled = env.compile_expression(expr).map_err(|e| format!("in `{expr}`: {}", one_line(&e)))?;
    let v = compiled
        .eval(minijinja::Value::from(minijinja::value::Serde(scope)))
        .map_err(|e| format!("in `{expr}`: {}", one_line(&e)))?;
    if v.is_undefined() {
        return Ok(Value::Null);
    }
    serde_json::to_value(&v).map_err(|e| format!("in `{expr}`: {e}"))
}

/// Whether a condition holds (Jinja truthiness).
pub fn holds(expr: &str, scope: &Value) -> Result<bool, String> {
    Ok(truthy(&eval(expr, scope)?))
}

/// Jinja's truthiness of a JSON value.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Renders a template (`{{ … }}`, `{% … %}`).
pub fn render(template: &str, scope: &Value) -> Result<String, String> {
    let env = environment();
    env.render_str(template, minijinja::Value::from(minijinja::value::Serde(scope))).map_err(|e| one_line(&e))
}

/// Checks that an expression compiles.
pub fn check_expr(expr: &str) -> Result<(), String> {
    environment().compile_expression(expr).map(|_| ()).map_err(|e| one_line(&e))
}

/// Checks that a template compiles.
pub fn check_template(template: &str) -> Result<(), String> {
    environment().template_from_str(template).map(|_| ()).map_err(|e| one_line(&e))
}

/// The `${…}` pieces of a value string: `(start, end, expression)` byte ranges.
fn interpolations(s: &str) -> Result<Vec<(usize, usize, &str)>, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] == b'$' && bytes[i + 1] == b'{' {
            let start = i;
            let mut depth = 0usize;
            let mut quote: Option<u8> = None;
            let mut j = i + 1;
            let mut end = None;
            while j < bytes.len() {
                let c = bytes[j];
                match quote {
                    Some(q) if c == q => quote = None,
                    Some(_) => {}
                    None => match c {
                        b'"' | b'\'' => quote = Some(c),
                        b'{' => depth += 1,
                        b'}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = Some(j);
                                break;
                            }
                        }
                        _ => {}
                    },
                }
                j += 1;
            }
            let Some(end) = end else {
                return Err(format!("unclosed `${{` in {s:?}"));
            };
            out.push((start, end + 1, s[start + 2..end].trim()));
            i = end + 1;
        } else {
            i += 1;
        }
    }
    Ok(out)
}

/// Resolves a value: every string in it is interpolated (a string that is one `${EXPR}`
/// becomes the expression's value, of any type).
pub fn resolve(value: &Value, scope: &Value) -> Result<Value, String> {
    match value {
        Value::String(s) => resolve_str(s, scope),
        Value::Array(a) => a.iter().map(|v| resolve(v, scope)).collect::<Result<Vec<_>, _>>().map(Value::Array),
        Value::Object(o) => {
            let mut out = serde_json::Map::new();
            for (k, v) in o {
                out.insert(k.clone(), resolve(v, scope)?);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

/// Resolves one value string (see [`resolve`]).
pub fn resolve_str(s: &str, scope: &Value) -> Result<Value, String> {
    let pieces = interpolations(s)?;
    if let [(0, end, expr)] = pieces.as_slice() {
        if *end == s.len() {
            return eval(expr, scope);
        }
    }
    let mut out = String::new();
    let mut last = 0;
    for (start, end, expr) in pieces {
        out.push_str(&s[last..start]);
        match eval(expr, scope)? {
            Value::String(t) => out.push_str(&t),
            Value::Null => {}
            v => out.push_str(&v.to_string()),
        }
        last = end;
    }
    out.push_str(&s[last..]);
    Ok(Value::String(out))
}

/// A value string resolved to text (`${…}` of any type is written as JSON).
pub fn resolve_text(s: &str, scope: &Value) -> Result<String, String> {
    Ok(match resolve_str(s, scope)? {
        Value::String(t) => t,
        Value::Null => String::new(),
        v => v.to_string(),
    })
}

/// The expressions inside a value string (to check and to find references in).
pub fn value_expressions(s: &str) -> Result<Vec<&str>, String> {
    Ok(interpolations(s)?.into_iter().map(|(_, _, e)| e).collect())
}

/// A reference to a run's scope found in an expression or template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `steps` or `inputs`.
    pub root: &'static str,
    pub name: String,
    /// The field after the name (`steps.answer.text` → `text`).
    pub field: Option<String>,
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Every `steps.NAME[.FIELD]` and `inputs.NAME` (also `steps["NAME"]`) in a text. Text
/// inside quotes is skipped only for the dotted form's prefix check, which is enough for
/// finding dependencies: a false positive adds an ordering edge and a check error, never
/// a silent wrong answer.
pub fn references(text: &str) -> Vec<Reference> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    for root in ["steps", "inputs"] {
        let mut from = 0;
        while let Some(pos) = text[from..].find(root) {
            let at = from + pos;
            from = at + root.len();
            if at > 0 && (is_ident(bytes[at - 1]) || bytes[at - 1] == b'.') {
                continue;
            }
            let rest = &text[from..];
            let (name, after) = if let Some(r) = rest.strip_prefix('.') {
                let n = r.bytes().take_while(|c| is_ident(*c)).count();
                (&r[..n], &r[n..])
            } else if let Some(r) = rest.strip_prefix("[\"").or_else(|| rest.strip_prefix("['")) {
                let n = r.bytes().take_while(|c| *c != b'"' && *c != b'\'').count();
                (&r[..n], r.get(n + 2..).unwrap_or(""))
            } else {
                continue;
            };
            if name.is_empty() {
                continue;
            }
            let field = after.strip_prefix('.').map(|r| {
                let n = r.bytes().take_while(|c| is_ident(*c)).count();
                r[..n].to_string()
            });
            out.push(Reference {
                root: if root == "steps" { "steps" } else { "inputs" },
                name: name.to_string(),
                field: field.filter(|f| !f.is_empty()),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope() -> Value {
        json!({"inputs": {"question": "How many?", "n": 3}, "steps": {"a": {"text": "hi", "rows": [[1], [2]]}}})
    }

    #[test]
    fn a_whole_interpolation_keeps_its_type_and_a_partial_one_is_text() {
        assert_eq!(resolve_str("${inputs.n}", &scope()).expect("ok"), json!(3));
        assert_eq!(resolve_str("${steps.a.rows}", &scope()).expect("ok"), json!([[1], [2]]));
        assert_eq!(resolve_str("n=${inputs.n}, ${steps.a.text}!", &scope()).expect("ok"), json!("n=3, hi!"));
        assert_eq!(resolve_str("no braces", &scope()).expect("ok"), json!("no braces"));
        assert_eq!(resolve_str("${ {'a': 1}['a'] }", &scope()).expect("ok"), json!(1));
        assert!(resolve_str("${inputs.n", &scope()).expect_err("an error").contains("unclosed"));
    }

    #[test]
    fn a_skipped_step_is_falsy_so_or_picks_the_arm_that_ran() {
        assert_eq!(eval("steps.kb.text or steps.a.text", &scope()).expect("ok"), json!("hi"));
        assert!(!holds("steps.kb.text", &scope()).expect("ok"));
        assert!(holds("inputs.n > 2 and steps.a.text == 'hi'", &scope()).expect("ok"));
    }

    #[test]
    fn templates_render_loops_and_runaway_ones_stop() {
        assert_eq!(render("{% for r in steps.a.rows %}{{ r[0] }};{% endfor %}", &scope()).expect("ok"), "1;2;");
        let err = render("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", &scope())
            .expect_err("an error");
        assert!(err.contains("fuel"), "{err}");
    }

    #[test]
    fn references_name_steps_fields_and_inputs() {
        let refs = references("{{ steps.answer.text }} ${inputs.question} steps['db'] nosteps.x");
        assert_eq!(
            refs,
            vec![
                Reference { root: "steps", name: "answer".into(), field: Some("text".into()) },
                Reference { root: "steps", name: "db".into(), field: None },
                Reference { root: "inputs", name: "question".into(), field: None },
            ]
        );
    }
}
