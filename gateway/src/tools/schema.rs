//! JSON Schemas for constrained answers: checking a strict schema, loosening a non-strict
//! one, and the schema of a tool call (`{"name": ..., "arguments": ...}`) for a set of tools.

use serde_json::{json, Map, Value};
use shoal_engine::constraint::JsonGrammar;

/// Validation keywords a non-strict schema may carry that constrained decoding does not
/// enforce: a non-strict schema loses them (the structure is still enforced); a strict one
/// with any of them is refused.
const LOOSE_KEYWORDS: &[&str] = &[
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "propertyNames",
    "patternProperties",
    "contains",
    "minContains",
    "maxContains",
    "dependentRequired",
    "dependentSchemas",
    "if",
    "then",
    "else",
    "not",
    "unevaluatedProperties",
    "unevaluatedItems",
    "contentEncoding",
    "contentMediaType",
    "nullable",
    "prefixItems",
    "allOf",
];

/// Checks that a strict schema can be enforced; the error names the unsupported feature and where.
pub fn check_strict(schema: &Value) -> Result<(), String> {
    JsonGrammar::compile(schema).map(|_| ()).map_err(|e| e.to_string())
}

/// A non-strict schema made enforceable: unsupported validation keywords dropped, `oneOf`
/// read as `anyOf`, `required` limited to the listed properties. Falls back to `fallback`
/// when the result still cannot be compiled.
pub fn loosen(schema: &Value, fallback: Value) -> Value {
    let mut s = schema.clone();
    loosen_in_place(&mut s, 0);
    if JsonGrammar::compile(&s).is_ok() {
        s
    } else {
        fallback
    }
}

fn loosen_in_place(s: &mut Value, depth: usize) {
    let Value::Object(map) = s else { return };
    if depth > 64 {
        return;
    }
    for k in LOOSE_KEYWORDS {
        map.remove(*k);
    }
    if let Some(one_of) = map.remove("oneOf") {
        map.entry("anyOf").or_insert(one_of);
    }
    if let (Some(Value::Object(props)), Some(Value::Array(required))) = (map.get("properties"), map.get("required")) {
        let kept: Vec<Value> =
            required.iter().filter(|r| r.as_str().is_some_and(|n| props.contains_key(n))).cloned().collect();
        map.insert("required".into(), Value::Array(kept));
    }
    for key in ["properties", "$defs", "definitions"] {
        if let Some(Value::Object(children)) = map.get_mut(key) {
            for child in children.values_mut() {
                loosen_in_place(child, depth + 1);
            }
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = map.get_mut(key) {
            loosen_in_place(child, depth + 1);
        }
    }
    if let Some(Value::Array(children)) = map.get_mut("anyOf") {
        for child in children {
            loosen_in_place(child, depth + 1);
        }
    }
}

/// One tool for the call schema: its name and the schema of its arguments.
pub struct CallTarget<'a> {
    pub name: &'a str,
    pub parameters: &'a Value,
}

/// The schema of one call to any of `targets`: `{"name": <one of the names>, "arguments":
/// <that tool's parameters>}`. Each tool's `$defs`/`definitions` move to the top under a
/// prefix (`t0__Name`) and its local `$ref`s are rewritten to match, so tools may share
/// definition names and refer to their own root (`#`).
pub fn call_schema(targets: &[CallTarget<'_>]) -> Value {
    let mut defs = Map::new();
    let mut alternatives = Vec::with_capacity(targets.len());
    for (i, t) in targets.iter().enumerate() {
        let prefix = format!("t{i}__");
        let mut params = t.parameters.clone();
        let mut own = Map::new();
        if let Value::Object(map) = &mut params {
            for key in ["$defs", "definitions"] {
                if let Some(Value::Object(d)) = map.remove(key) {
                    own.extend(d);
                }
            }
        }
        let refers_to_root = rewrite_refs(&mut params, &prefix);
        for (name, mut def) in own {
            rewrite_refs(&mut def, &prefix);
            defs.insert(format!("{prefix}{name}"), def);
        }
        let arguments = if refers_to_root {
            defs.insert(format!("{prefix}root"), params);
            json!({"$ref": format!("#/$defs/{prefix}root")})
        } else {
            params
        };
        alternatives.push(json!({
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": arguments},
            "required": ["name", "arguments"],
            "additionalProperties": false,
        }));
    }
    let mut schema = if alternatives.len() == 1 {
        alternatives.pop().unwrap_or(Value::Null)
    } else {
        json!({"anyOf": alternatives})
    };
    if !defs.is_empty() {
        schema["$defs"] = Value::Object(defs);
    }
    schema
}

/// Rewrites local `$ref`s (`#/$defs/X`, `#/definitions/X`, `#`) under `prefix`; returns whether
/// any referred to the root.
fn rewrite_refs(v: &mut Value, prefix: &str) -> bool {
    let mut root = false;
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("$ref") {
                if r == "#" {
                    *r = format!("#/$defs/{prefix}root");
                    root = true;
                } else if let Some(name) = r.strip_prefix("#/$defs/").or_else(|| r.strip_prefix("#/definitions/")) {
                    *r = format!("#/$defs/{prefix}{name}");
                }
            }
            for (k, child) in map.iter_mut() {
                if k != "$ref" && k != "const" && k != "enum" && k != "default" && k != "examples" {
                    root |= rewrite_refs(child, prefix);
                }
            }
        }
        Value::Array(items) => {
            for child in items {
                root |= rewrite_refs(child, prefix);
            }
        }
        _ => {}
    }
    root
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_engine::constraint::JsonMatcher;
    use std::sync::Arc;

    fn accepts(schema: &Value, doc: &str) -> bool {
        let g = Arc::new(JsonGrammar::compile(schema).expect("compiles"));
        let mut m = JsonMatcher::new(g);
        m.feed(doc.as_bytes()) && m.is_complete()
    }

    #[test]
    fn strict_schemas_name_what_they_cannot_enforce() {
        let s = json!({"type": "object", "properties": {"email": {"type": "string", "format": "email"}}});
        let err = check_strict(&s).expect_err("refused");
        assert!(err.contains("format"), "{err}");
        assert!(check_strict(&json!({"type": "object", "properties": {"a": {"type": "integer"}}})).is_ok());
    }

    #[test]
    fn loosening_keeps_the_structure_and_drops_validation() {
        let s = json!({
            "type": "object",
            "properties": {
                "format": {"type": "string", "format": "uri", "pattern": "^h"},
                "n": {"oneOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
            },
            "required": ["format", "missing"],
        });
        let l = loosen(&s, json!({"type": "object"}));
        assert!(l["properties"].get("format").is_some(), "a property named like a keyword stays: {l}");
        assert!(l["properties"]["format"].get("pattern").is_none());
        assert_eq!(l["required"], json!(["format"]));
        assert!(accepts(&l, r#"{"format": "x", "n": null}"#));
        assert!(!accepts(&l, r#"{"n": 2}"#), "format is still required");
    }

    #[test]
    fn a_call_schema_names_each_tool_and_keeps_their_definitions_apart() {
        let weather = json!({"type": "object", "properties": {"city": {"$ref": "#/$defs/City"}}, "required": ["city"],
            "$defs": {"City": {"type": "string"}}});
        let tree = json!({"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#"}}}});
        let calc = json!({"type": "object", "properties": {"x": {"$ref": "#/definitions/City"}}, "required": ["x"],
            "definitions": {"City": {"type": "integer"}}});
        let s = call_schema(&[
            CallTarget { name: "weather", parameters: &weather },
            CallTarget { name: "tree", parameters: &tree },
            CallTarget { name: "calc", parameters: &calc },
        ]);
        assert!(accepts(&s, r#"{"name": "weather", "arguments": {"city": "Paris"}}"#), "{s}");
        assert!(accepts(&s, r#"{"name": "calc", "arguments": {"x": 3}}"#));
        assert!(!accepts(&s, r#"{"name": "calc", "arguments": {"x": "Paris"}}"#), "each tool keeps its own City");
        assert!(accepts(&s, r#"{"name": "tree", "arguments": {"kids": [{"kids": []}]}}"#));
        assert!(!accepts(&s, r#"{"name": "other", "arguments": {}}"#));
        assert!(!accepts(&s, r#"{"name": "weather", "arguments": {}}"#), "required arguments");
        let one = call_schema(&[CallTarget { name: "weather", parameters: &weather }]);
        assert!(one.get("anyOf").is_none() && accepts(&one, r#"{"name":"weather","arguments":{"city":"Oslo"}}"#));
    }
}
