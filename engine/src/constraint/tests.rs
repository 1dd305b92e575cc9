//! Unit tests of the schema compiler and the matcher.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{JsonGrammar, JsonMatcher, SchemaError, MAX_DEPTH, MAX_NUMBER_DIGITS};

fn grammar(schema: &Value) -> Arc<JsonGrammar> {
    Arc::new(JsonGrammar::compile(schema).expect("schema compiles"))
}

fn matcher(schema: &Value) -> JsonMatcher {
    JsonMatcher::new(grammar(schema))
}

/// Feed `doc` one byte at a time; the number of bytes taken before the first refusal.
fn taken(m: &mut JsonMatcher, doc: &[u8]) -> usize {
    for (i, b) in doc.iter().enumerate() {
        if !m.feed(&[*b]) {
            return i;
        }
    }
    doc.len()
}

/// `doc` is accepted byte by byte and ends complete.
fn accepted(schema: &Value, doc: &str) -> bool {
    let mut m = matcher(schema);
    taken(&mut m, doc.as_bytes()) == doc.len() && m.is_complete()
}

/// `doc` is accepted as a prefix (not necessarily complete).
fn prefix_ok(schema: &Value, doc: &[u8]) -> bool {
    matcher(schema).feed(doc)
}

fn assert_docs(schema: &Value, good: &[&str], bad: &[&str]) {
    for doc in good {
        assert!(accepted(schema, doc), "should accept {doc} for {schema}");
    }
    for doc in bad {
        assert!(!accepted(schema, doc), "should refuse {doc} for {schema}");
    }
}

fn compile_err(schema: &Value) -> SchemaError {
    match JsonGrammar::compile(schema) {
        Ok(_) => panic!("schema should not compile: {schema}"),
        Err(e) => e,
    }
}

#[test]
fn strings_numbers_booleans_null() {
    assert_docs(&json!({"type": "string"}), &[r#""""#, r#""hello""#], &["1", "null", r#""abc"#, "'a'"]);
    assert_docs(
        &json!({"type": "number"}),
        &["0", "-0", "12", "-3.25", "1e5", "1E+2", "2.5e-3", "-0.0"],
        &["01", "1.", ".5", "+1", "-", "1e", "1e+", "--1", "0x1", "\"1\"", "1.5.2", "NaN", "Infinity"],
    );
    assert_docs(&json!({"type": "integer"}), &["0", "-7", "123456"], &["1.5", "1e3", "1.0", "-", "00"]);
    assert_docs(&json!({"type": "boolean"}), &["true", "false"], &["tru", "null", "True", "1", "truee"]);
    assert_docs(&json!({"type": "null"}), &["null"], &["nul", "false", "None", "nulll"]);
}

#[test]
fn objects_and_arrays_nest() {
    let schema = json!({
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
                "required": ["name"]
            },
            "scores": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}
        },
        "required": ["user"]
    });
    assert_docs(
        &schema,
        &[
            r#"{"user":{"name":"a"}}"#,
            r#"{"user":{"name":"a","tags":[]},"scores":[[1,2],[],[3]]}"#,
            r#"{"scores":[[0]],"user":{"tags":["x","y"],"name":"b"}}"#,
        ],
        &[
            r#"{"user":{"name":1}}"#,
            r#"{"user":{"tags":[]}}"#,
            r#"{"user":{"name":"a"},"scores":[[1.5]]}"#,
            r#"{"user":{"name":"a"},"scores":[1]}"#,
            r#"{"user":{"name":"a"}"#,
        ],
    );
}

#[test]
fn close_waits_for_required_properties() {
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]});
    let mut m = matcher(&schema);
    assert!(m.feed(br#"{"a":1"#));
    assert!(!m.accepts(b"}"));
    // No space either: a space could only be followed by `}`, a dead end.
    assert!(!m.accepts(b" "));
    let allowed = m.allowed_bytes();
    assert!(!allowed[b'}' as usize] && !allowed[b' ' as usize] && allowed[b',' as usize]);
    assert!(m.feed(br#","b":2"#));
    assert!(m.accepts(b"}") && m.accepts(b" }"));
    assert!(!m.is_complete());
    assert!(m.feed(b"}"));
    assert!(m.is_complete() && m.is_finished());
    // Missing required at `{`: the empty object is refused too.
    assert!(!prefix_ok(&schema, b"{}"));
    assert!(!prefix_ok(&schema, b"{ }"));
}

#[test]
fn duplicate_keys_are_refused() {
    let declared = json!({"type": "object", "properties": {"a": {"type": "integer"}, "ab": {"type": "integer"}}});
    assert!(prefix_ok(&declared, br#"{"a":1,"ab":2}"#));
    assert!(!prefix_ok(&declared, br#"{"a":1,"a""#));
    assert!(prefix_ok(&declared, br#"{"a":1,"a"#), "\"a\" may still become \"ab\"");
    // Once every declared key is used, `,` is refused: no key is left to write.
    assert!(!prefix_ok(&declared, br#"{"a":1,"ab":2,"#));

    let free = Arc::new(JsonGrammar::any_object());
    let mut m = JsonMatcher::new(free);
    assert!(m.feed(br#"{"x":1,"xy":{"x":1,"y":[]},"y":2,"#));
    assert!(!m.accepts(br#""x""#));
    assert!(!m.accepts(br#""xy""#));
    assert!(!m.accepts(br#""\u0078""#), "an escaped spelling of a used key is the same key");
    assert!(m.accepts(br#""z""#));
    assert!(m.accepts(br#""x2""#));
    // Keys of a nested object do not leak into its parent or siblings.
    assert!(prefix_ok(&json!({"type": "object"}), br#"{"a":{"b":1},"b":{"b":2}}"#));
}

#[test]
fn additional_properties_policy() {
    let closed = json!({"type": "object", "properties": {"a": {"type": "string"}}});
    assert!(accepted(&closed, r#"{"a":"x"}"#));
    assert!(accepted(&closed, "{}"));
    assert!(!prefix_ok(&closed, br#"{"b"#));
    assert!(!prefix_ok(&closed, br#"{"a":"x","#));
    let explicit_false =
        json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": false});
    assert!(!prefix_ok(&explicit_false, br#"{"b"#));

    let open = json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": true});
    assert!(accepted(&open, r#"{"a":"x","b":[1,{"c":null}]}"#));
    assert!(!accepted(&open, r#"{"a":1}"#), "a declared key keeps its schema");

    let typed =
        json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "integer"}});
    assert_docs(
        &typed,
        &[r#"{"b":1,"a":"x","c":2}"#, r#"{"\u00e9":3}"#, r#"{"a\"":4}"#],
        &[r#"{"b":"x"}"#, r#"{"a":1}"#, r#"{"\u0061":1}"#, r#"{"\u0061":"x"}"#],
    );

    // Neither properties nor additionalProperties: anything.
    assert!(accepted(&json!({"type": "object"}), r#"{"k":[true,{"z":"q"}],"n":null}"#));
    // A required name outside properties takes the additionalProperties schema.
    let req = json!({"type": "object", "additionalProperties": {"type": "integer"}, "required": ["id"]});
    assert_docs(&req, &[r#"{"id":1}"#, r#"{"x":2,"id":3}"#], &[r#"{"x":2}"#, r#"{"id":"1"}"#, "{}"]);
}

#[test]
fn enum_and_const() {
    let colors = json!({"enum": ["red", "green", "grey"]});
    assert_docs(&colors, &[r#""red""#, r#""grey""#], &[r#""gre""#, r#""blue""#, r#""Red""#, "red"]);
    let mut m = matcher(&colors);
    assert!(m.feed(br#""gr"#));
    let allowed = m.allowed_bytes();
    let next: Vec<u8> = (0..=255u8).filter(|b| allowed[*b as usize]).collect();
    assert_eq!(next, vec![b'e']);

    // 1 and 10: after `1` the value may or may not be complete.
    let nums = json!({"enum": [1, 10, 2.5]});
    let mut m = matcher(&nums);
    assert!(m.feed(b"1"));
    assert!(m.is_complete() && !m.is_finished());
    assert!(m.accepts(b"0") && !m.accepts(b"1") && !m.accepts(b"."));
    assert!(m.feed(b"0"));
    assert!(m.is_complete() && m.is_finished());
    assert_docs(&nums, &["2.5"], &["2", "100", "25"]);
    let in_array = json!({"type": "array", "items": {"enum": [1, 10]}});
    assert_docs(&in_array, &["[1,10,1]", "[10, 1]", "[1 ]"], &["[2]", "[1,100]", "[11]"]);
    let in_object = json!({"type": "object", "properties": {"n": {"enum": [1, 10]}, "m": {"type": "integer"}}});
    assert_docs(&in_object, &[r#"{"n":1,"m":2}"#, r#"{"n":10 }"#], &[r#"{"n":12}"#]);

    let mixed = json!({"enum": [null, true, {"a": [1, 2]}, [1, "x"], "s"]});
    assert_docs(
        &mixed,
        &["null", "true", r#"{"a":[1,2]}"#, r#"[1,"x"]"#, r#""s""#],
        &["false", r#"{"a": [1,2]}"#, r#"{"a":[1]}"#, "[1]"],
    );
    assert_docs(&json!({"const": "fixed"}), &[r#""fixed""#], &[r#""fixe""#, r#""fixedd""#]);
    assert_docs(&json!({"const": 42}), &["42"], &["4", "420", "42.0"]);
    let mut m = matcher(&json!({"const": 42}));
    assert!(m.feed(b"42") && m.is_finished());

    // Values the rest of the schema refuses are dropped.
    let typed = json!({"type": "string", "enum": ["a", 1, "bb"], "maxLength": 1});
    assert_docs(&typed, &[r#""a""#], &["1", r#""bb""#]);
    let both = json!({"enum": ["a", "b"], "const": "b"});
    assert_docs(&both, &[r#""b""#], &[r#""a""#]);
}

#[test]
fn any_of_and_type_unions() {
    let nullable = json!({"type": ["string", "null"]});
    assert_docs(&nullable, &["null", r#""x""#], &["1", "nul"]);
    let nullable = json!({"anyOf": [{"type": "string"}, {"type": "null"}]});
    assert_docs(&nullable, &["null", r#""x""#], &["1", "{}"]);

    // Overlapping object alternatives stay alive until they differ.
    let shapes = json!({"anyOf": [
        {"type": "object", "properties": {"kind": {"const": "circle"}, "r": {"type": "number"}}, "required": ["kind", "r"]},
        {"type": "object", "properties": {"kind": {"const": "rect"}, "w": {"type": "number"}, "h": {"type": "number"}}, "required": ["kind", "w", "h"]},
        {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
        {"type": "integer"}
    ]});
    assert_docs(
        &shapes,
        &[
            r#"{"kind":"circle","r":1.5}"#,
            r#"{"kind":"rect","w":1,"h":2}"#,
            r#"{"x":3}"#,
            r#"{"h":2,"kind":"rect","w":1}"#,
            "7",
        ],
        &[r#"{"kind":"circle","w":1}"#, r#"{"kind":"rect","r":1}"#, r#"{"x":1.5}"#, "1.5", r#"{"kind":"circle"}"#],
    );
    // Identical alternatives merge instead of piling up.
    let many: Vec<Value> = (0..200).map(|_| json!({"type": "array", "items": {"type": "integer"}})).collect();
    assert!(accepted(&json!({"anyOf": many}), "[1,2,3]"));
    // Nested anyOf inside arrays.
    let arr = json!({"type": "array", "items": {"anyOf": [{"type": "string", "maxLength": 1}, {"type": "string", "minLength": 3}]}});
    assert_docs(&arr, &[r#"["a","abc",""]"#], &[r#"["ab"]"#]);
}

#[test]
fn recursive_refs() {
    let tree = json!({
        "$defs": {
            "node": {
                "type": "object",
                "properties": {"value": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                "required": ["value"]
            }
        },
        "$ref": "#/$defs/node"
    });
    assert_docs(
        &tree,
        &[
            r#"{"value":1}"#,
            r#"{"value":1,"children":[{"value":2,"children":[{"value":3}]},{"value":4,"children":[]}]}"#,
        ],
        &[r#"{"value":1,"children":[{"children":[]}]}"#, r#"{"value":1,"children":[{"value":"x"}]}"#],
    );
    let list = json!({
        "type": "object",
        "properties": {"v": {"type": "integer"}, "next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}},
        "required": ["v", "next"]
    });
    assert_docs(&list, &[r#"{"v":1,"next":{"v":2,"next":null}}"#], &[r#"{"v":1,"next":{"v":2}}"#]);
    let legacy =
        json!({"definitions": {"a": {"$ref": "#/definitions/b"}, "b": {"type": "boolean"}}, "$ref": "#/definitions/a"});
    assert_docs(&legacy, &["true"], &["1"]);
}

#[test]
fn nesting_is_capped() {
    let any = Arc::new(JsonGrammar::any_value());
    let mut m = JsonMatcher::new(any);
    let depth = usize::from(MAX_DEPTH);
    assert!(m.feed(&vec![b'['; depth]));
    assert!(!m.accepts(b"["));
    assert!(!m.accepts(b"{"));
    assert!(m.accepts(b"1"));
    assert!(m.feed(&vec![b']'; depth]));
    assert!(m.is_finished());
    let tree = json!({"type": "array", "items": {"$ref": "#"}});
    let mut m = matcher(&tree);
    assert!(m.feed(&vec![b'['; depth]));
    assert!(!m.accepts(b"["));
    assert!(m.accepts(b"]"));
}

#[test]
fn array_lengths() {
    let schema = json!({"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2});
    assert_docs(&schema, &["[1]", "[1,2]", "[ 1, 2 ]"], &["[]", "[ ]", "[1,2,3]"]);
    let mut m = matcher(&schema);
    assert!(m.feed(b"["));
    assert!(!m.accepts(b"]"));
    assert!(m.feed(b"1,2"));
    assert!(!m.accepts(b","));
    assert!(m.accepts(b"]"));
    let empty = json!({"type": "array", "maxItems": 0});
    assert_docs(&empty, &["[]", "[ ]"], &["[1]"]);
}

#[test]
fn string_lengths_count_characters() {
    let schema = json!({"type": "string", "minLength": 2, "maxLength": 3});
    assert_docs(
        &schema,
        &[r#""ab""#, r#""abc""#, "\"é€\"", "\"😀😀😀\"", r#""\n\t""#, r#""\ud83d\ude00x""#, r#""\u00e9a\"""#],
        &[r#""a""#, r#""abcd""#, "\"é\"", r#""\ud83d\ude00""#, r#""""#],
    );
    let mut m = matcher(&schema);
    assert!(m.feed(br#""abc"#));
    assert!(!m.accepts(b"d") && !m.accepts(b"\\") && !m.accepts(&[0xC3]));
    assert!(m.accepts(b"\""));
}

#[test]
fn string_escapes_and_utf8() {
    let s = json!({"type": "string"});
    assert_docs(
        &s,
        &[
            r#""\"\\\/\b\f\n\r\t""#,
            r#""\u0041\u00E9\uffff""#,
            r#""\uD83D\uDE00""#,
            "\"é\"",
            "\"日本\"",
            "\"😀\"",
            r#""\u0000""#,
        ],
        &[r#""\x""#, r#""\u12""#, r#""\uD83D""#, r#""\uD83Dx""#, r#""\uDE00""#, r#""\uD83D\u0041""#, r#""\U0041""#],
    );
    for bad in [
        &b"\"\n\""[..],
        b"\"\x01",
        b"\"\xC3\x28",
        b"\"\xFF",
        b"\"\xC0\x80",
        b"\"\x80",
        b"\"\xED\xA0\x80",
        b"\"\xF4\x90",
        b"\"\xF5",
        b"\"\xE0\x80",
    ] {
        assert!(!prefix_ok(&s, bad), "{bad:?} should be refused");
    }
    // A multi-byte character is accepted only once complete.
    let mut m = matcher(&s);
    assert!(m.feed(b"\"\xF0\x9F\x98"));
    assert!(!m.accepts(b"\""));
    assert!(m.feed(b"\x80\""));
    assert!(m.is_finished());
    // The matcher refuses `\uDC` at once (every continuation would be a lone low surrogate).
    let mut m = matcher(&s);
    assert!(m.feed(br#""\uD"#));
    assert!(!m.accepts(b"C") && m.accepts(b"8"));
}

#[test]
fn whitespace_policy() {
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "array", "items": {"type": "integer"}}}});
    assert_docs(
        &schema,
        &[r#"{"a": 1, "b": [1, 2]}"#, r#"{"a":1}"#, r#"{ "a":1 }"#, r#"{"b":[ 1 ]}"#, "{ }", "{}", r#"{"b":[ ]}"#],
        &[
            r#" {"a":1}"#,
            r#"{"a":1} "#,
            r#"{"a" :1}"#,
            r#"{"a":1 ,"b":[]}"#,
            r#"{"a":  1}"#,
            r#"{  "a":1}"#,
            r#"{"a":1,  "b":[]}"#,
            "{\n\"a\":1}",
            "{\"a\":\t1}",
            r#"{"a":1  }"#,
            r#"{"b":[1 ,2]}"#,
            r#"{"b":[1,  2]}"#,
        ],
    );
    assert!(!accepted(&json!({"type": "integer"}), " 1"));
    assert!(!accepted(&json!({"type": "integer"}), "1 "));
}

#[test]
fn complete_and_finished() {
    let mut m = matcher(&json!({"type": "number"}));
    assert!(!m.is_complete());
    assert!(m.feed(b"-"));
    assert!(!m.is_complete());
    assert!(m.feed(b"12"));
    assert!(m.is_complete() && !m.is_finished());
    assert!(m.feed(b"."));
    assert!(!m.is_complete());
    assert!(m.feed(b"5e"));
    assert!(!m.is_complete());
    assert!(m.feed(b"3"));
    assert!(m.is_complete() && !m.is_finished());

    let mut m = matcher(&json!({"type": "object", "properties": {"a": {"type": "integer"}}}));
    assert!(m.feed(br#"{"a":1"#));
    assert!(!m.is_complete());
    assert!(m.feed(b"}"));
    assert!(m.is_complete() && m.is_finished());
    assert!(!m.feed(b" "));

    let mut m = matcher(&json!({"type": "boolean"}));
    assert!(m.feed(b"fals"));
    assert!(!m.is_complete());
    assert!(m.feed(b"e"));
    assert!(m.is_finished());

    // Digits are capped so a model cannot loop on them.
    let mut m = matcher(&json!({"type": "integer"}));
    assert!(m.feed(&vec![b'9'; usize::from(MAX_NUMBER_DIGITS)]));
    assert!(!m.accepts(b"9"));
    assert!(m.is_finished());
    let mut m = matcher(&json!({"type": "number"}));
    assert!(m.feed(b"1e99"));
    assert!(!m.accepts(b"9"), "exponents are capped");
}

#[test]
fn accepts_and_failed_feed_leave_state_alone() {
    let schema = json!({"type": "object", "properties": {"name": {"type": "string"}, "n": {"type": "integer"}}});
    let mut m = matcher(&schema);
    assert!(m.feed(br#"{"na"#));
    let before = m.allowed_bytes();
    assert!(m.accepts(br#"me":"x"}"#));
    assert!(!m.accepts(br#"me":1}"#));
    assert_eq!(m.allowed_bytes(), before);
    assert!(!m.feed(br#"me":1}"#), "a token refused partway");
    assert_eq!(m.allowed_bytes(), before);
    assert!(m.feed(b""));
    assert!(m.accepts(b""));
    assert!(m.feed(br#"me":"x"}"#));
    assert!(m.is_finished());
    // Clones are independent.
    let mut a = matcher(&schema);
    let b = a.clone();
    assert!(a.feed(b"{"));
    assert!(b.accepts(b"{") && !b.accepts(b"}"));
}

#[test]
fn allowed_bytes_agree_with_accepts() {
    let cases = [
        (
            json!({"type": "object", "properties": {"a": {"type": "number"}, "s": {"type": "string", "maxLength": 2}, "e": {"enum": [1, 10, "x"]}}, "required": ["a"]}),
            r#"{"s": "\u00e9", "e": 10, "a": -1.5e+3}"#,
        ),
        (
            json!({"anyOf": [{"type": "array", "items": {"type": "boolean"}}, {"type": ["string", "null"]}]}),
            "[true, false]",
        ),
        (json!({"type": "object", "additionalProperties": {"type": "integer"}}), r#"{"k\"": 1, "\ud83d\ude00": 2}"#),
    ];
    for (schema, doc) in cases {
        let mut m = matcher(&schema);
        for (i, &b) in doc.as_bytes().iter().enumerate() {
            let allowed = m.allowed_bytes();
            for x in 0..=255u8 {
                assert_eq!(allowed[x as usize], m.accepts(&[x]), "byte {x} after {:?}", &doc[..i]);
            }
            assert!(m.feed(&[b]), "{doc} at {i}");
        }
        assert!(m.is_complete());
    }
}

#[test]
fn properties_beyond_one_bitset_word() {
    let names: Vec<String> = (0..70).map(|i| format!("p{i}")).collect();
    let props: serde_json::Map<String, Value> = names.iter().map(|n| (n.clone(), json!({"type": "integer"}))).collect();
    let schema = json!({"type": "object", "properties": props, "required": names});
    let body: Vec<String> = names.iter().enumerate().map(|(i, n)| format!("\"{n}\":{i}")).collect();
    let full = format!("{{{}}}", body.join(","));
    assert!(accepted(&schema, &full));
    let missing = format!("{{{}}}", body[..69].join(","));
    assert!(!accepted(&schema, &missing));
    let twice = format!("{{{},\"p65\":1}}", body[..69].join(","));
    assert!(!accepted(&schema, &twice));
}

#[test]
fn keys_are_matched_as_serialized() {
    let schema = json!({"type": "object", "properties": {"a\"b": {"type": "integer"}, "é": {"type": "integer"}}, "required": ["a\"b"]});
    assert_docs(&schema, &[r#"{"a\"b":1}"#, "{\"é\":2,\"a\\\"b\":1}"], &[r#"{"\u00e9":2,"a\"b":1}"#, r#"{"ab":1}"#]);
}

#[test]
fn any_object_and_any_value() {
    let obj = Arc::new(JsonGrammar::any_object());
    let mut m = JsonMatcher::new(obj.clone());
    assert!(!m.accepts(b"["));
    assert!(!m.accepts(b"1"));
    assert!(m.feed(br#"{"a": [1, {"b": null}], "c": "d"}"#));
    assert!(m.is_finished());
    let empty = JsonMatcher::new(obj);
    assert!(empty.accepts(b"{}"));
    let any = json!({});
    assert_docs(&any, &["1", "[]", r#"{"x":[true]}"#, r#""s""#, "null"], &["", "]", "nan"]);
    assert!(accepted(&json!(true), "[1]"));
}

#[test]
fn matcher_is_send_and_sync() {
    fn check<T: Send + Sync + Clone>() {}
    check::<JsonMatcher>();
    check::<JsonGrammar>();
}

#[test]
fn unsupported_keywords_are_named_with_their_path() {
    let keywords = [
        ("pattern", json!("^a")),
        ("format", json!("date")),
        ("minimum", json!(1)),
        ("maximum", json!(1)),
        ("exclusiveMinimum", json!(1)),
        ("exclusiveMaximum", json!(1)),
        ("multipleOf", json!(2)),
        ("allOf", json!([{}])),
        ("oneOf", json!([{}])),
        ("not", json!({})),
        ("if", json!({})),
        ("then", json!({})),
        ("else", json!({})),
        ("patternProperties", json!({})),
        ("propertyNames", json!({})),
        ("uniqueItems", json!(true)),
        ("contains", json!({})),
        ("minProperties", json!(1)),
        ("maxProperties", json!(1)),
        ("dependentRequired", json!({})),
        ("prefixItems", json!([])),
        ("unevaluatedProperties", json!(false)),
        ("x-custom", json!(1)),
    ];
    for (kw, value) in keywords {
        let mut inner = serde_json::Map::new();
        inner.insert("type".into(), json!("string"));
        inner.insert(kw.into(), value);
        let schema = json!({"type": "object", "properties": {"city": Value::Object(inner.clone())}});
        let e = compile_err(&schema);
        assert_eq!(e.path, format!("/properties/city/{kw}"), "{kw}");
        assert!(e.message.contains(&format!("\"{kw}\"")), "{kw}: {}", e.message);
        assert!(e.message.contains("/properties/city"), "{kw}: {}", e.message);
        assert_eq!(e.to_string(), e.message);
        let e = compile_err(&Value::Object(inner));
        assert_eq!(e.path, format!("/{kw}"));
        assert!(e.message.contains(&format!("\"{kw}\"")) && e.message.contains("root"), "{}", e.message);
    }
    let e = compile_err(&json!({"type": "array", "items": {"anyOf": [{"type": "string", "pattern": "x"}]}}));
    assert_eq!(e.path, "/items/anyOf/0/pattern");
    let e = compile_err(&json!({"$defs": {"a~b/c": {"format": "uri"}}, "$ref": "#/$defs/a~0b~1c"}));
    assert_eq!(e.path, "/$defs/a~0b~1c/format");
}

#[test]
fn invalid_schemas_are_errors() {
    let cases = [
        (json!({"type": "object", "properties": {"a": {}}, "required": ["b"]}), "/required/0", "\"b\""),
        (
            json!({"type": "object", "properties": {"a": {}}, "required": ["b"], "additionalProperties": false}),
            "/required/0",
            "\"b\"",
        ),
        (json!({"enum": []}), "/enum", "enum"),
        (json!({"type": "strin"}), "/type", "\"strin\""),
        (json!({"type": ["string", "date"]}), "/type", "\"date\""),
        (json!({"type": []}), "/type", "type"),
        (json!(5), "", "schema"),
        (json!("string"), "", "schema"),
        (json!({"properties": {"a": 3}}), "/properties/a", "schema"),
        (json!({"$ref": "#/$defs/missing"}), "/$ref", "missing"),
        (json!({"$ref": "other.json#/x"}), "/$ref", "$ref"),
        (
            json!({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}),
            "/$defs/",
            "circular",
        ),
        (json!({"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}, {"type": "null"}]}}}), "/$defs/a/anyOf", "anyOf"),
        (json!({"type": "array", "items": [{"type": "string"}]}), "/items", "tuple"),
        (json!({"type": "array", "minItems": 3, "maxItems": 2}), "/minItems", "minItems"),
        (json!({"type": "string", "minLength": -1}), "/minLength", "minLength"),
        (json!({"type": "string", "maxLength": "3"}), "/maxLength", "maxLength"),
        (json!({"$ref": "#/$defs/a", "type": "string", "$defs": {"a": {}}}), "/type", "$ref"),
        (json!({"anyOf": [{"type": "string"}], "type": "string"}), "/type", "anyOf"),
        (json!({"anyOf": []}), "/anyOf", "anyOf"),
        (json!({"type": "integer", "enum": ["a", "b"]}), "/enum", "enum"),
        (json!({"enum": [1], "const": 2}), "/enum", "enum"),
        (json!({"type": "object", "properties": {"a": false}}), "/properties/a", "false"),
        (json!({"type": "object", "additionalProperties": 1}), "/additionalProperties", "additionalProperties"),
        (json!({"type": "object", "required": "a"}), "/required", "required"),
        (json!({"$defs": []}), "/$defs", "$defs"),
    ];
    for (schema, path, word) in cases {
        let e = compile_err(&schema);
        assert!(e.path.starts_with(path), "{schema}: path {} (want {path}): {}", e.path, e.message);
        assert!(e.message.contains(word), "{schema}: message {:?} should name {word}", e.message);
    }
}

#[test]
fn deep_schemas_error_instead_of_overflowing() {
    let mut schema = json!({"type": "integer"});
    for _ in 0..300 {
        schema = json!({"type": "array", "items": schema});
    }
    let e = compile_err(&schema);
    assert!(e.message.contains("deeper"), "{}", e.message);
}

#[test]
fn annotations_are_ignored() {
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "x", "$comment": "c", "title": "T", "description": "D", "strict": true,
        "type": "object",
        "properties": {"a": {"type": "string", "default": "x", "examples": ["y"], "deprecated": false, "readOnly": true, "writeOnly": false, "description": "d"}},
        "required": ["a"],
        "additionalProperties": false
    });
    assert!(accepted(&schema, r#"{"a":"z"}"#));
    // Property names are names, not keywords.
    let names = json!({"type": "object", "properties": {"format": {"type": "string"}, "pattern": {"type": "integer"}}});
    assert!(accepted(&names, r#"{"pattern":1,"format":"x"}"#));
    // A $ref may carry annotations.
    let with_ref = json!({"$defs": {"n": {"type": "null"}}, "$ref": "#/$defs/n", "description": "nothing"});
    assert!(accepted(&with_ref, "null"));
}

#[test]
fn type_is_inferred_from_keywords() {
    assert_docs(&json!({"properties": {"a": {"type": "integer"}}}), &[r#"{"a":1}"#], &["1", r#""a""#]);
    assert_docs(&json!({"items": {"type": "integer"}}), &["[1]"], &["1"]);
    assert_docs(&json!({"maxLength": 1}), &[r#""a""#], &["1", r#""ab""#]);
}

#[test]
fn garbage_never_panics() {
    let schemas = [
        json!({}),
        json!({"type": "object", "properties": {"a": {"enum": [1, 10, "x"]}}, "additionalProperties": {"type": "string", "maxLength": 2}}),
        json!({"anyOf": [{"type": "array", "items": {"$ref": "#"}}, {"type": "string", "minLength": 1}, {"const": 12}]}),
    ];
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for schema in &schemas {
        let g = grammar(schema);
        for _ in 0..200 {
            let mut m = JsonMatcher::new(g.clone());
            for _ in 0..64 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let chunk = seed.to_le_bytes();
                let n = (seed >> 60) as usize % 4 + 1;
                let _ = m.feed(&chunk[..n]);
                let _ = m.allowed_bytes();
                let _ = m.is_finished();
            }
        }
    }
}

#[test]
fn huge_enums_and_schemas_are_refused_with_the_limit() {
    let values: Vec<serde_json::Value> =
        (0..=super::MAX_ENUM_VALUES).map(|i| serde_json::json!(format!("v{i}"))).collect();
    let err = JsonGrammar::compile(&serde_json::json!({"enum": values})).expect_err("too many values");
    assert!(err.message.contains("at most 500"), "{err}");
    let props: serde_json::Map<String, serde_json::Value> =
        (0..6000).map(|i| (format!("p{i}"), serde_json::json!({"type": "integer"}))).collect();
    let err = JsonGrammar::compile(&serde_json::json!({"type": "object", "properties": props})).expect_err("too big");
    assert!(err.message.contains("too big"), "{err}");
    let ok: serde_json::Map<String, serde_json::Value> =
        (0..100).map(|i| (format!("p{i}"), serde_json::json!({"enum": [1, 2, 3]}))).collect();
    assert!(JsonGrammar::compile(&serde_json::json!({"type": "object", "properties": ok})).is_ok());
}
