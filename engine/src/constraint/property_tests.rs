//! Property-style tests: hand-written schemas with valid documents, mutated documents and random
//! walks, all checked by serde_json (duplicate keys refused) and a small independent validator.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{json, Map, Value};

use super::{JsonGrammar, JsonMatcher};

/// A JSON value parsed with duplicate object keys refused (serde_json keeps the last silently).
struct Strict(Value);

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("non-finite number"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(de::Error::custom(format!("duplicate key {k:?}")));
            }
            let Strict(v) = map.next_value()?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

/// An independent validator for the supported subset, with the same policies as the compiler
/// (strict `additionalProperties` default, type inferred from keywords).
struct Validator<'a> {
    root: &'a Value,
}

impl Validator<'_> {
    fn resolve(&self, r: &str) -> Option<&Value> {
        if r == "#" {
            return Some(self.root);
        }
        let rest = r.strip_prefix("#/")?;
        let (kind, name) = rest.split_once('/')?;
        self.root.get(kind)?.get(name.replace("~1", "/").replace("~0", "~"))
    }

    fn valid(&self, s: &Value, v: &Value) -> bool {
        let m = match s {
            Value::Bool(b) => return *b,
            Value::Object(m) => m,
            _ => return false,
        };
        if let Some(Value::String(r)) = m.get("$ref") {
            return self.resolve(r).is_some_and(|t| self.valid(t, v));
        }
        if let Some(Value::Array(e)) = m.get("enum") {
            if !e.contains(v) {
                return false;
            }
        }
        if let Some(c) = m.get("const") {
            if c != v {
                return false;
            }
        }
        if let Some(Value::Array(any)) = m.get("anyOf") {
            return any.iter().any(|s| self.valid(s, v));
        }
        let has = |kws: &[&str]| kws.iter().any(|k| m.contains_key(*k));
        let types: Vec<&str> = match m.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => {
                let mut t = Vec::new();
                if has(&["properties", "required", "additionalProperties"]) {
                    t.push("object");
                }
                if has(&["items", "minItems", "maxItems"]) {
                    t.push("array");
                }
                if has(&["minLength", "maxLength"]) {
                    t.push("string");
                }
                if t.is_empty() {
                    return true;
                }
                t
            }
        };
        let count = |k: &str| m.get(k).and_then(Value::as_u64);
        types.iter().any(|t| match (*t, v) {
            ("null", Value::Null) | ("boolean", Value::Bool(_)) | ("number", Value::Number(_)) => true,
            ("integer", Value::Number(n)) => n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0),
            ("string", Value::String(s)) => {
                let n = s.chars().count() as u64;
                count("minLength").is_none_or(|min| n >= min) && count("maxLength").is_none_or(|max| n <= max)
            }
            ("array", Value::Array(a)) => {
                let n = a.len() as u64;
                let items = m.get("items").cloned().unwrap_or(Value::Bool(true));
                count("minItems").is_none_or(|min| n >= min)
                    && count("maxItems").is_none_or(|max| n <= max)
                    && a.iter().all(|x| self.valid(&items, x))
            }
            ("object", Value::Object(o)) => {
                let props = m.get("properties").and_then(Value::as_object);
                let additional = match m.get("additionalProperties") {
                    None if props.is_some() => Value::Bool(false),
                    None => Value::Bool(true),
                    Some(a) => a.clone(),
                };
                let required = m.get("required").and_then(Value::as_array).cloned().unwrap_or_default();
                required.iter().filter_map(Value::as_str).all(|r| o.contains_key(r))
                    && o.iter().all(|(k, x)| match props.and_then(|p| p.get(k)) {
                        Some(ps) => self.valid(ps, x),
                        None => self.valid(&additional, x),
                    })
            }
            _ => false,
        })
    }
}

/// Whether `bytes` is a valid document for `schema`, judged without the matcher.
fn really_valid(schema: &Value, bytes: &[u8]) -> Result<(), String> {
    std::str::from_utf8(bytes).map_err(|e| format!("invalid UTF-8: {e}"))?;
    let Strict(v) = serde_json::from_slice::<Strict>(bytes).map_err(|e| format!("serde_json: {e}"))?;
    if (Validator { root: schema }).valid(schema, &v) {
        Ok(())
    } else {
        Err(format!("violates the schema: {v}"))
    }
}

/// Fed byte by byte: accepted whole and complete.
fn matches(g: &Arc<JsonGrammar>, bytes: &[u8]) -> bool {
    let mut m = JsonMatcher::new(g.clone());
    bytes.iter().all(|b| m.feed(&[*b])) && m.is_complete()
}

fn corpus() -> Vec<(Value, Vec<&'static str>)> {
    vec![
        (
            json!({"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}}, "required": ["city"]}),
            vec![r#"{"city":"Paris"}"#, r#"{"city": "Zürich", "unit": "c"}"#, r#"{"unit":"f","city":"NY"}"#],
        ),
        (
            json!({"type": "object", "properties": {"items": {"type": "array", "minItems": 1, "items": {
                "type": "object",
                "properties": {"id": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
                "required": ["id"]}}}, "required": ["items"]}),
            vec![
                r#"{"items":[{"id":1}]}"#,
                r#"{ "items": [ {"id": -2, "tags": ["a", "b"]}, {"tags": [], "id": 0} ] }"#,
            ],
        ),
        (
            json!({"type": "object", "properties": {"a": {"type": ["string", "null"]}, "b": {"type": ["integer", "null"]}}, "required": ["a", "b"]}),
            vec![r#"{"a":null,"b":3}"#, r#"{"b": null, "a": "x"}"#],
        ),
        (
            json!({"anyOf": [
                {"type": "object", "properties": {"t": {"const": "a"}, "v": {"type": "string"}}, "required": ["t", "v"]},
                {"type": "object", "properties": {"t": {"const": "b"}, "v": {"type": "number"}}, "required": ["t", "v"]}
            ]}),
            vec![r#"{"t":"a","v":"x"}"#, r#"{"v": 2.5, "t": "b"}"#],
        ),
        (
            json!({"$defs": {"node": {"type": "object", "properties": {
                "value": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                "required": ["value"]}}, "$ref": "#/$defs/node"}),
            vec![
                r#"{"value":1,"children":[{"value":2,"children":[{"value":3}]},{"value":4}]}"#,
                r#"{"children": [], "value": 9}"#,
            ],
        ),
        (json!({"type": "object"}), vec![r#"{"a":[1,{"b":null}],"c":"d"}"#, "{ }", r#"{"k": {"k": {"k": true}}}"#]),
        (json!({}), vec![r#"[1,"a",{"b":null}]"#, "-1.5e3", r#""x""#, "true"]),
        (json!({"type": "array", "items": {"type": "number"}}), vec!["[0,-0.5,1e10,2E-3]", "[ 12, 0.125 ]"]),
        (
            json!({"type": "object", "properties": {"n": {"const": 42}, "m": {"enum": [1, 10, 100]}}, "required": ["n", "m"]}),
            vec![r#"{"n":42,"m":10}"#, r#"{"m": 100, "n": 42}"#, r#"{"n":42,"m":1}"#],
        ),
        (
            json!({"type": "array", "items": {"type": "string", "minLength": 2, "maxLength": 4}}),
            vec![r#"["ab","abcd","é€"]"#, "[]"],
        ),
        (
            json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "integer"}}),
            vec![r#"{"a":"x","b":1}"#, r#"{"zz": 2, "a": "y", "b": 3}"#],
        ),
        (
            json!({"type": "object", "properties": {"ok": {"type": "boolean"}, "none": {"type": "null"}}, "required": ["ok", "none"]}),
            vec![r#"{"ok":true,"none":null}"#, r#"{"none": null, "ok": false}"#],
        ),
        (
            json!({"definitions": {"point": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"]}},
                "type": "object", "properties": {"from": {"$ref": "#/definitions/point"}, "to": {"$ref": "#/definitions/point"}}, "required": ["from", "to"]}),
            vec![r#"{"from":{"x":0,"y":1},"to":{"x":2.5,"y":-3}}"#],
        ),
        (
            json!({"enum": ["red", 1, null, true, {"a": [1]}, [1, 2]]}),
            vec![r#""red""#, "1", "null", "true", r#"{"a":[1]}"#, "[1,2]"],
        ),
        (
            json!({"type": "array", "items": {"type": "array", "items": {"type": "integer"}, "maxItems": 2}, "minItems": 1, "maxItems": 3}),
            vec!["[[1,2],[],[3]]", "[[]]", "[ [ 1 ], [ 2, 3 ] ]"],
        ),
        (
            json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
            vec![r#"{"text":"a\"b\\c\n\u00e9\ud83d\ude00/\/"}"#, "{\"text\":\"日本語 😀\"}"],
        ),
        (
            json!({"type": "object", "properties": {"v": {"type": "integer"}, "next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}}, "required": ["v", "next"]}),
            vec![r#"{"v":1,"next":{"v":2,"next":null}}"#, r#"{"next": null, "v": 3}"#],
        ),
        (
            json!({"type": "object", "additionalProperties": false, "required": ["name", "arguments"], "properties": {
                "name": {"const": "get_weather"},
                "arguments": {"type": "object", "properties": {"location": {"type": "string"}, "days": {"type": "integer"}},
                    "required": ["location", "days"], "additionalProperties": false}}}),
            vec![
                r#"{"name":"get_weather","arguments":{"location":"Oslo","days":3}}"#,
                r#"{"arguments": {"days": 1, "location": "Rome"}, "name": "get_weather"}"#,
            ],
        ),
        (
            json!({"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 3}, {"type": "array", "items": {"type": "boolean"}}]}),
            vec!["12", r#""abc""#, "[true,false]", "[]"],
        ),
        (json!({"type": "object", "required": ["x"]}), vec![r#"{"x":1}"#, r#"{"y": 2, "x": []}"#]),
        (
            json!({"type": "object", "properties": {"a\"b": {"type": "integer"}, "é": {"type": "string"}}, "required": ["a\"b"]}),
            vec![r#"{"a\"b":1}"#, "{\"é\": \"x\", \"a\\\"b\": 2}"],
        ),
    ]
}

const MUTATIONS: &[u8] = b" \"}]{[,:0159-.eEatfnxu\\\n\xC3\xA9\xFF\x00";

#[test]
fn corpus_documents_match_and_mutants_stay_valid() {
    let mut accepted_mutants = 0usize;
    for (schema, docs) in corpus() {
        let g = Arc::new(JsonGrammar::compile(&schema).expect("corpus schema compiles"));
        for doc in docs {
            let bytes = doc.as_bytes();
            really_valid(&schema, bytes).unwrap_or_else(|e| panic!("corpus document {doc} for {schema}: {e}"));
            assert!(matches(&g, bytes), "{doc} should match {schema}");
            // Whole-document feed agrees with byte by byte feed.
            let mut whole = JsonMatcher::new(g.clone());
            assert!(whole.feed(bytes) && whole.is_complete());

            let mut mutants: Vec<Vec<u8>> = Vec::new();
            for i in 0..bytes.len() {
                let mut dropped = bytes.to_vec();
                dropped.remove(i);
                mutants.push(dropped);
                for &x in MUTATIONS {
                    if bytes.get(i) != Some(&x) {
                        let mut changed = bytes.to_vec();
                        if let Some(slot) = changed.get_mut(i) {
                            *slot = x;
                        }
                        mutants.push(changed);
                        let mut inserted = bytes.to_vec();
                        inserted.insert(i, x);
                        mutants.push(inserted);
                    }
                }
            }
            for mutant in mutants {
                if matches(&g, &mutant) {
                    accepted_mutants += 1;
                    if let Err(e) = really_valid(&schema, &mutant) {
                        panic!("matcher accepted {:?} for {schema}: {e}", String::from_utf8_lossy(&mutant));
                    }
                }
            }
        }
    }
    // Mutating within strings and numbers keeps many documents valid: the check is not vacuous.
    assert!(accepted_mutants > 500, "only {accepted_mutants} mutants accepted");
}

/// A tiny xorshift generator (deterministic, no dependency).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const CLOSERS: &[u8] = b"\"}]:0nulx";
const NICE: &[u8] = b" \"{}[],:0123456789-.eEabcdefgtruefalsnlxyz\\/uA\xC3\xA9";

#[test]
fn random_walks_never_dead_end_and_produce_valid_documents() {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for (schema, _) in corpus() {
        let g = Arc::new(JsonGrammar::compile(&schema).expect("corpus schema compiles"));
        let mut completed = 0;
        for walk in 0..40 {
            let mut m = JsonMatcher::new(g.clone());
            let mut out = Vec::new();
            loop {
                let allowed = m.allowed_bytes();
                if walk == 0 {
                    for b in 0..=255u8 {
                        assert_eq!(
                            allowed[b as usize],
                            m.accepts(&[b]),
                            "byte {b} after {:?}",
                            String::from_utf8_lossy(&out)
                        );
                    }
                }
                let choices: Vec<u8> = (0..=255u8).filter(|b| allowed[*b as usize]).collect();
                if choices.is_empty() {
                    assert!(m.is_complete(), "dead end after {:?} for {schema}", String::from_utf8_lossy(&out));
                    assert!(m.is_finished());
                    break;
                }
                assert!(!m.is_finished());
                if m.is_complete() && rng.below(4) == 0 {
                    break;
                }
                if out.len() > 3000 {
                    break;
                }
                // Past a few hundred bytes, steer towards closing what is open.
                let closing: Vec<u8> = choices.iter().copied().filter(|b| CLOSERS.contains(b)).collect();
                let nice: Vec<u8> = choices.iter().copied().filter(|b| NICE.contains(b)).collect();
                let pool = if out.len() > 300 && !closing.is_empty() && rng.below(10) != 0 {
                    &closing
                } else if !nice.is_empty() && rng.below(10) != 0 {
                    &nice
                } else {
                    &choices
                };
                let b = pool.get(rng.below(pool.len())).copied().unwrap_or(b' ');
                assert!(m.feed(&[b]));
                out.push(b);
            }
            if m.is_complete() {
                completed += 1;
                if let Err(e) = really_valid(&schema, &out) {
                    panic!("random walk produced {:?} for {schema}: {e}", String::from_utf8_lossy(&out));
                }
            }
        }
        assert!(completed >= 10, "only {completed} of 40 walks completed for {schema}");
    }
}
