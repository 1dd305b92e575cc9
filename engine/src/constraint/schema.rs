//! Compiling a JSON Schema (the supported subset) into an arena of nodes.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::lexer::{hash_bytes, HASH_START};
use super::matcher::State;
use super::SchemaError;

/// Index of a node in [`JsonGrammar::nodes`].
pub(crate) type NodeId = u32;

/// Node 0 of every grammar: any JSON value.
pub(crate) const ANY: NodeId = 0;

pub(crate) const T_OBJECT: u8 = 1;
pub(crate) const T_ARRAY: u8 = 1 << 1;
pub(crate) const T_STRING: u8 = 1 << 2;
pub(crate) const T_NUMBER: u8 = 1 << 3;
pub(crate) const T_INTEGER: u8 = 1 << 4;
pub(crate) const T_BOOLEAN: u8 = 1 << 5;
pub(crate) const T_NULL: u8 = 1 << 6;
const T_ALL: u8 = T_OBJECT | T_ARRAY | T_STRING | T_NUMBER | T_INTEGER | T_BOOLEAN | T_NULL;

/// Deepest schema nesting `compile` follows (deeper is an error, not a stack overflow).
const MAX_SCHEMA_DEPTH: usize = 128;

/// Keywords that constrain; everything else but [`IGNORED`] is refused.
const SUPPORTED: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "enum",
    "const",
    "anyOf",
    "$ref",
];

/// Annotations (and definition containers) that do not constrain the output.
const IGNORED: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "strict",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$defs",
    "definitions",
];

const OBJECT_KEYWORDS: &[&str] = &["properties", "required", "additionalProperties"];
const ARRAY_KEYWORDS: &[&str] = &["items", "minItems", "maxItems"];
const STRING_KEYWORDS: &[&str] = &["minLength", "maxLength"];

/// What an object may contain.
#[derive(Debug, Clone, Default)]
pub(crate) struct ObjectSpec {
    /// Declared property names as serde_json writes them (quotes included), sorted bytewise.
    pub(crate) keys: Vec<Box<[u8]>>,
    /// The schema of each key in `keys`.
    pub(crate) values: Vec<NodeId>,
    /// Hashes of the declared names (decoded UTF-8), sorted: a free key must not be one of them.
    pub(crate) name_hashes: Vec<u64>,
    /// Bitset over `keys` of the required properties.
    pub(crate) required: Vec<u64>,
    /// Schema of keys not in `keys`; `None` refuses them.
    pub(crate) additional: Option<NodeId>,
}

impl ObjectSpec {
    /// Number of 64-bit words of a used-property bitset.
    pub(crate) fn words(&self) -> usize {
        self.keys.len().div_ceil(64)
    }
}

/// A node accepting values of one or more JSON types.
#[derive(Debug, Clone)]
pub(crate) struct Typed {
    /// `T_*` bits.
    pub(crate) types: u8,
    pub(crate) object: ObjectSpec,
    pub(crate) items: NodeId,
    pub(crate) min_items: u32,
    pub(crate) max_items: u32,
    pub(crate) min_length: u32,
    pub(crate) max_length: u32,
}

/// One compiled schema.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    Typed(Box<Typed>),
    /// `enum`/`const`: compact serializations, sorted and deduplicated; `base` is the rest of the
    /// schema (only used at compile time to drop the values it refuses).
    Literals {
        values: Vec<Box<[u8]>>,
        base: NodeId,
    },
    /// `anyOf`: any of these (never another alias; cycles through `AnyOf` alone are refused).
    AnyOf(Vec<NodeId>),
    /// A `$ref` (or a definition slot) standing for another node; gone after compilation.
    Alias(NodeId),
}

/// A compiled JSON Schema: an arena of nodes, cheap to share behind an `Arc` between matchers.
#[derive(Debug, Clone)]
pub struct JsonGrammar {
    pub(crate) nodes: Vec<Node>,
    pub(crate) root: NodeId,
}

fn any_node() -> Node {
    Node::Typed(Box::new(Typed {
        types: T_ALL,
        object: ObjectSpec { additional: Some(ANY), ..ObjectSpec::default() },
        items: ANY,
        min_items: 0,
        max_items: u32::MAX,
        min_length: 0,
        max_length: u32::MAX,
    }))
}

impl JsonGrammar {
    /// Compile a JSON Schema (see the module docs for the subset and its policies). Any keyword
    /// outside the supported set and the ignored annotations is an error naming it and its place.
    pub fn compile(schema: &Value) -> Result<JsonGrammar, SchemaError> {
        Compiler::new(schema).run()
    }

    /// Any JSON object (OpenAI `response_format: {"type": "json_object"}`).
    pub fn any_object() -> JsonGrammar {
        let object = Typed {
            types: T_OBJECT,
            object: ObjectSpec { additional: Some(ANY), ..ObjectSpec::default() },
            items: ANY,
            min_items: 0,
            max_items: u32::MAX,
            min_length: 0,
            max_length: u32::MAX,
        };
        JsonGrammar { nodes: vec![any_node(), Node::Typed(Box::new(object))], root: 1 }
    }

    /// Any JSON value.
    pub fn any_value() -> JsonGrammar {
        JsonGrammar { nodes: vec![any_node()], root: ANY }
    }

    pub(crate) fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id as usize)
    }

    pub(crate) fn typed(&self, id: NodeId) -> Option<&Typed> {
        match self.node(id) {
            Some(Node::Typed(t)) => Some(t),
            _ => None,
        }
    }

    pub(crate) fn literals(&self, id: NodeId) -> Option<&[Box<[u8]>]> {
        match self.node(id) {
            Some(Node::Literals { values, .. }) => Some(values),
            _ => None,
        }
    }
}

/// Escape one JSON pointer segment.
fn segment(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// `path` as words for a message.
fn at(path: &str) -> String {
    if path.is_empty() {
        "the root".to_string()
    } else {
        path.to_string()
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn type_bit(name: &str) -> Option<u8> {
    Some(match name {
        "object" => T_OBJECT,
        "array" => T_ARRAY,
        "string" => T_STRING,
        "number" => T_NUMBER,
        "integer" => T_INTEGER,
        "boolean" => T_BOOLEAN,
        "null" => T_NULL,
        _ => return None,
    })
}

/// Nesting depth of a JSON value, without recursion, stopping once past `cap`.
fn value_depth_exceeds(v: &Value, cap: usize) -> bool {
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        if d > cap {
            return true;
        }
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            Value::Object(m) => stack.extend(m.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    false
}

struct Compiler<'s> {
    schema: &'s Value,
    nodes: Vec<Node>,
    /// Where each node was defined (for errors found after compiling it).
    paths: Vec<String>,
    /// `"$defs/NAME"` / `"definitions/NAME"` to its slot.
    defs: HashMap<String, NodeId>,
    /// The slot standing for the whole schema (target of `"$ref": "#"`).
    root_slot: NodeId,
}

impl<'s> Compiler<'s> {
    fn new(schema: &'s Value) -> Compiler<'s> {
        Compiler {
            schema,
            nodes: vec![any_node(), Node::Alias(1)],
            paths: vec![String::new(), String::new()],
            defs: HashMap::new(),
            root_slot: 1,
        }
    }

    fn push(&mut self, node: Node, path: &str) -> NodeId {
        self.nodes.push(node);
        self.paths.push(path.to_string());
        (self.nodes.len() - 1) as NodeId
    }

    fn set(&mut self, slot: NodeId, node: Node) {
        if let Some(n) = self.nodes.get_mut(slot as usize) {
            *n = node;
        }
    }

    fn run(mut self) -> Result<JsonGrammar, SchemaError> {
        // Every root definition gets a slot first, so `$ref`s (recursive ones included) resolve
        // to node ids; each definition is then compiled once, whether referenced or not.
        let mut definitions = Vec::new();
        if let Value::Object(root) = self.schema {
            for kind in ["$defs", "definitions"] {
                match root.get(kind) {
                    None => {}
                    Some(Value::Object(defs)) => {
                        for (name, def) in defs {
                            let path = format!("/{kind}/{}", segment(name));
                            let slot = self.push(Node::Alias(self.nodes.len() as NodeId), &path);
                            self.defs.insert(format!("{kind}/{name}"), slot);
                            definitions.push((slot, def, path));
                        }
                    }
                    Some(other) => {
                        return Err(SchemaError::new(
                            format!("/{kind}"),
                            format!("\"{kind}\" must be an object of schemas, found {}", json_kind(other)),
                        ))
                    }
                }
            }
        }
        let root = self.schema(self.schema, "", 0)?;
        self.set(self.root_slot, Node::Alias(root));
        for (slot, def, path) in definitions {
            let id = self.schema(def, &path, 1)?;
            self.set(slot, Node::Alias(id));
        }
        self.finish()
    }

    fn schema(&mut self, v: &'s Value, path: &str, depth: usize) -> Result<NodeId, SchemaError> {
        if self.nodes.len() > super::MAX_NODES {
            return Err(SchemaError::new(
                path,
                format!("the schema is too big: more than {} parts (at {})", super::MAX_NODES, at(path)),
            ));
        }
        if depth > MAX_SCHEMA_DEPTH {
            return Err(SchemaError::new(
                path,
                format!("schema nested deeper than {MAX_SCHEMA_DEPTH} levels at {}", at(path)),
            ));
        }
        match v {
            Value::Bool(true) => Ok(ANY),
            Value::Bool(false) => Err(SchemaError::new(
                path,
                format!(
                    "the schema false (matches nothing) is only supported as \"additionalProperties\", found at {}",
                    at(path)
                ),
            )),
            Value::Object(m) => self.object_schema(m, path, depth),
            other => Err(SchemaError::new(
                path,
                format!("a schema must be an object or a boolean, found {} at {}", json_kind(other), at(path)),
            )),
        }
    }

    fn object_schema(&mut self, m: &'s Map<String, Value>, path: &str, depth: usize) -> Result<NodeId, SchemaError> {
        for k in m.keys() {
            if !SUPPORTED.contains(&k.as_str()) && !IGNORED.contains(&k.as_str()) {
                return Err(SchemaError::new(
                    format!("{path}/{}", segment(k)),
                    format!("unsupported JSON Schema keyword \"{k}\" at {}", at(path)),
                ));
            }
        }
        if let Some(r) = m.get("$ref") {
            if let Some(other) = m.keys().find(|k| *k != "$ref" && !IGNORED.contains(&k.as_str())) {
                return Err(SchemaError::new(
                    format!("{path}/{}", segment(other)),
                    format!("keyword \"{other}\" beside \"$ref\" is not supported at {}", at(path)),
                ));
            }
            return self.reference(r, &format!("{path}/$ref"));
        }
        if m.contains_key("enum") || m.contains_key("const") {
            return self.literals(m, path, depth);
        }
        self.core(m, path, depth)
    }

    fn reference(&mut self, r: &Value, path: &str) -> Result<NodeId, SchemaError> {
        let Value::String(s) = r else {
            return Err(SchemaError::new(path, format!("\"$ref\" must be a string, found {} at {path}", json_kind(r))));
        };
        if s == "#" {
            return Ok(self.root_slot);
        }
        let unsupported = || {
            SchemaError::new(
                path,
                format!(
                    "unsupported \"$ref\" \"{s}\" at {path}: only \"#\", \"#/$defs/NAME\" and \"#/definitions/NAME\" are supported"
                ),
            )
        };
        let rest = s.strip_prefix("#/").ok_or_else(unsupported)?;
        let (kind, name) = rest.split_once('/').ok_or_else(unsupported)?;
        if (kind != "$defs" && kind != "definitions") || name.contains('/') {
            return Err(unsupported());
        }
        let name = name.replace("~1", "/").replace("~0", "~");
        self.defs.get(&format!("{kind}/{name}")).copied().ok_or_else(|| {
            SchemaError::new(path, format!("\"$ref\" \"{s}\" at {path} names a definition that does not exist"))
        })
    }

    fn literals(&mut self, m: &'s Map<String, Value>, path: &str, depth: usize) -> Result<NodeId, SchemaError> {
        let base = self.core(m, path, depth)?;
        let mut values: Vec<&Value> = match m.get("enum") {
            None => Vec::new(),
            Some(Value::Array(a)) if a.is_empty() => {
                return Err(SchemaError::new(format!("{path}/enum"), format!("\"enum\" at {} is empty", at(path))))
            }
            Some(Value::Array(a)) if a.len() > super::MAX_ENUM_VALUES => {
                return Err(SchemaError::new(
                    format!("{path}/enum"),
                    format!(
                        "\"enum\" at {} lists {} values; at most {} are supported",
                        at(path),
                        a.len(),
                        super::MAX_ENUM_VALUES
                    ),
                ))
            }
            Some(Value::Array(a)) => a.iter().collect(),
            Some(other) => {
                return Err(SchemaError::new(
                    format!("{path}/enum"),
                    format!("\"enum\" at {} must be an array, found {}", at(path), json_kind(other)),
                ))
            }
        };
        if let Some(c) = m.get("const") {
            if m.contains_key("enum") {
                values.retain(|v| *v == c);
            } else {
                values = vec![c];
            }
        }
        let mut texts = Vec::with_capacity(values.len());
        for v in values {
            // Values nested past the matcher's cap could never be produced; skip them (and avoid
            // serializing absurdly deep values).
            if value_depth_exceeds(v, usize::from(super::MAX_DEPTH) + 1) {
                continue;
            }
            let text = serde_json::to_vec(v).map_err(|e| SchemaError::new(path, format!("enum value: {e}")))?;
            texts.push(text.into_boxed_slice());
        }
        texts.sort();
        texts.dedup();
        let keyword = if m.contains_key("enum") { "enum" } else { "const" };
        Ok(self.push(Node::Literals { values: texts, base }, &format!("{path}/{keyword}")))
    }

    /// The schema without `$ref`, `enum` and `const`.
    fn core(&mut self, m: &'s Map<String, Value>, path: &str, depth: usize) -> Result<NodeId, SchemaError> {
        if let Some(any) = m.get("anyOf") {
            let constraining = ["type"].iter().chain(OBJECT_KEYWORDS).chain(ARRAY_KEYWORDS).chain(STRING_KEYWORDS);
            for k in constraining {
                if m.contains_key(*k) {
                    return Err(SchemaError::new(
                        format!("{path}/{k}"),
                        format!(
                            "\"anyOf\" combined with \"{k}\" is not supported at {}: move \"{k}\" into each alternative",
                            at(path)
                        ),
                    ));
                }
            }
            let list = match any {
                Value::Array(a) if !a.is_empty() => a,
                other => {
                    return Err(SchemaError::new(
                        format!("{path}/anyOf"),
                        format!("\"anyOf\" at {} must be a non-empty array, found {}", at(path), json_kind(other)),
                    ))
                }
            };
            let mut children = Vec::with_capacity(list.len());
            for (i, s) in list.iter().enumerate() {
                children.push(self.schema(s, &format!("{path}/anyOf/{i}"), depth + 1)?);
            }
            if let [only] = children[..] {
                return Ok(only);
            }
            return Ok(self.push(Node::AnyOf(children), &format!("{path}/anyOf")));
        }

        let types = match m.get("type") {
            None => {
                let has = |kws: &[&str]| kws.iter().any(|k| m.contains_key(*k));
                let mut t = 0;
                if has(OBJECT_KEYWORDS) {
                    t |= T_OBJECT;
                }
                if has(ARRAY_KEYWORDS) {
                    t |= T_ARRAY;
                }
                if has(STRING_KEYWORDS) {
                    t |= T_STRING;
                }
                if t == 0 {
                    return Ok(ANY);
                }
                t
            }
            Some(Value::String(s)) => type_bit(s).ok_or_else(|| unknown_type(path, s))?,
            Some(Value::Array(a)) if !a.is_empty() => {
                let mut t = 0;
                for (i, name) in a.iter().enumerate() {
                    let Value::String(s) = name else {
                        return Err(SchemaError::new(
                            format!("{path}/type/{i}"),
                            format!("\"type\" at {} lists {}, not a type name", at(path), json_kind(name)),
                        ));
                    };
                    t |= type_bit(s).ok_or_else(|| unknown_type(path, s))?;
                }
                t
            }
            Some(other) => {
                return Err(SchemaError::new(
                    format!("{path}/type"),
                    format!(
                        "\"type\" at {} must be a type name or a non-empty array of them, found {}",
                        at(path),
                        json_kind(other)
                    ),
                ))
            }
        };

        let object = self.object_spec(m, path, depth)?;
        let items = match m.get("items") {
            None => ANY,
            Some(Value::Array(_)) => {
                return Err(SchemaError::new(
                    format!("{path}/items"),
                    format!("\"items\" as an array (tuple validation) is not supported at {}", at(path)),
                ))
            }
            Some(s) => self.schema(s, &format!("{path}/items"), depth + 1)?,
        };
        let (min_items, max_items) = bounds(m, path, "minItems", "maxItems")?;
        let (min_length, max_length) = bounds(m, path, "minLength", "maxLength")?;
        let typed = Typed { types, object, items, min_items, max_items, min_length, max_length };
        Ok(self.push(Node::Typed(Box::new(typed)), path))
    }

    fn object_spec(&mut self, m: &'s Map<String, Value>, path: &str, depth: usize) -> Result<ObjectSpec, SchemaError> {
        let mut props: Vec<(String, NodeId)> = Vec::new();
        let declared = m.get("properties");
        match declared {
            None => {}
            Some(Value::Object(pm)) => {
                for (name, s) in pm {
                    let id = self.schema(s, &format!("{path}/properties/{}", segment(name)), depth + 1)?;
                    props.push((name.clone(), id));
                }
            }
            Some(other) => {
                return Err(SchemaError::new(
                    format!("{path}/properties"),
                    format!("\"properties\" at {} must be an object, found {}", at(path), json_kind(other)),
                ))
            }
        }
        // Strict default: listing properties without `additionalProperties` closes the object.
        let additional = match m.get("additionalProperties") {
            None if declared.is_some() => None,
            None | Some(Value::Bool(true)) => Some(ANY),
            Some(Value::Bool(false)) => None,
            Some(s @ Value::Object(_)) => Some(self.schema(s, &format!("{path}/additionalProperties"), depth + 1)?),
            Some(other) => {
                return Err(SchemaError::new(
                    format!("{path}/additionalProperties"),
                    format!(
                        "\"additionalProperties\" at {} must be a boolean or a schema, found {}",
                        at(path),
                        json_kind(other)
                    ),
                ))
            }
        };
        let mut required_names = Vec::new();
        match m.get("required") {
            None => {}
            Some(Value::Array(a)) => {
                for (i, name) in a.iter().enumerate() {
                    let Value::String(name) = name else {
                        return Err(SchemaError::new(
                            format!("{path}/required/{i}"),
                            format!("\"required\" at {} lists {}, not a property name", at(path), json_kind(name)),
                        ));
                    };
                    if !props.iter().any(|(n, _)| n == name) {
                        let Some(extra) = additional else {
                            return Err(SchemaError::new(
                                format!("{path}/required/{i}"),
                                format!(
                                    "required property \"{name}\" at {} is not in \"properties\" and additional properties are not allowed",
                                    at(path)
                                ),
                            ));
                        };
                        props.push((name.clone(), extra));
                    }
                    required_names.push(name.as_str());
                }
            }
            Some(other) => {
                return Err(SchemaError::new(
                    format!("{path}/required"),
                    format!("\"required\" at {} must be an array of names, found {}", at(path), json_kind(other)),
                ))
            }
        }

        let mut entries = Vec::with_capacity(props.len());
        for (name, id) in &props {
            let key = serde_json::to_vec(name).map_err(|e| SchemaError::new(path, format!("property name: {e}")))?;
            entries.push((key.into_boxed_slice(), *id, name.as_str()));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut spec = ObjectSpec { additional, ..ObjectSpec::default() };
        spec.required = vec![0; entries.len().div_ceil(64)];
        for (i, (key, id, name)) in entries.into_iter().enumerate() {
            if required_names.contains(&name) {
                if let Some(w) = spec.required.get_mut(i / 64) {
                    *w |= 1 << (i % 64);
                }
            }
            spec.name_hashes.push(hash_bytes(HASH_START, name.as_bytes()));
            spec.keys.push(key);
            spec.values.push(id);
        }
        spec.name_hashes.sort_unstable();
        Ok(spec)
    }

    fn finish(mut self) -> Result<JsonGrammar, SchemaError> {
        // Resolve aliases (refs and definition slots) to real nodes.
        let n = self.nodes.len();
        let mut target: Vec<NodeId> = Vec::with_capacity(n);
        for start in 0..n {
            let mut id = start as NodeId;
            let mut steps = 0;
            while let Some(Node::Alias(next)) = self.nodes.get(id as usize) {
                id = *next;
                steps += 1;
                if steps > n {
                    // `id` is on the cycle now.
                    let path = self.paths.get(id as usize).cloned().unwrap_or_default();
                    return Err(SchemaError::new(
                        path.clone(),
                        format!("circular \"$ref\" at {} never reaches a schema", at(&path)),
                    ));
                }
            }
            target.push(id);
        }
        let resolve = |id: &mut NodeId| {
            if let Some(t) = target.get(*id as usize) {
                *id = *t;
            }
        };
        for node in &mut self.nodes {
            match node {
                Node::Typed(t) => {
                    resolve(&mut t.items);
                    t.object.values.iter_mut().for_each(resolve);
                    if let Some(a) = &mut t.object.additional {
                        resolve(a);
                    }
                }
                Node::Literals { base, .. } => resolve(base),
                Node::AnyOf(children) => children.iter_mut().for_each(resolve),
                Node::Alias(_) => {}
            }
        }
        let mut root = self.root_slot;
        resolve(&mut root);

        self.check_anyof_cycles()?;

        let mut grammar = JsonGrammar { nodes: self.nodes, root };
        filter_literals(&mut grammar);
        for (id, node) in grammar.nodes.iter().enumerate() {
            if let Node::Literals { values, .. } = node {
                if values.is_empty() {
                    let path = self.paths.get(id).cloned().unwrap_or_default();
                    return Err(SchemaError::new(
                        path.clone(),
                        format!("no value listed by {} satisfies the rest of its schema", at(&path)),
                    ));
                }
            }
        }
        Ok(grammar)
    }

    /// An `anyOf` that reaches itself through `anyOf`s alone would make the matcher choose
    /// forever without reading a byte: refuse it.
    fn check_anyof_cycles(&self) -> Result<(), SchemaError> {
        // 0 = unvisited, 1 = on the current path, 2 = done.
        let mut mark = vec![0u8; self.nodes.len()];
        for start in 0..self.nodes.len() {
            if !matches!(self.nodes.get(start), Some(Node::AnyOf(_))) || mark.get(start) != Some(&0) {
                continue;
            }
            // Iterative depth-first search: (node, next child index).
            let mut stack = vec![(start, 0usize)];
            if let Some(m) = mark.get_mut(start) {
                *m = 1;
            }
            while let Some(&mut (id, ref mut next)) = stack.last_mut() {
                let child = match self.nodes.get(id) {
                    Some(Node::AnyOf(children)) => children.get(*next).map(|c| *c as usize),
                    _ => None,
                };
                *next += 1;
                match child {
                    None => {
                        if let Some(m) = mark.get_mut(id) {
                            *m = 2;
                        }
                        stack.pop();
                    }
                    Some(c) if matches!(self.nodes.get(c), Some(Node::AnyOf(_))) => match mark.get(c) {
                        Some(0) => {
                            if let Some(m) = mark.get_mut(c) {
                                *m = 1;
                            }
                            stack.push((c, 0));
                        }
                        Some(1) => {
                            let path = self.paths.get(c).cloned().unwrap_or_default();
                            return Err(SchemaError::new(
                                path.clone(),
                                format!(
                                    "\"anyOf\" at {} refers back to itself without any value in between",
                                    at(&path)
                                ),
                            ));
                        }
                        _ => {}
                    },
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }
}

fn unknown_type(path: &str, name: &str) -> SchemaError {
    SchemaError::new(
        format!("{path}/type"),
        format!(
            "unknown type \"{name}\" at {} (expected object, array, string, number, integer, boolean or null)",
            at(path)
        ),
    )
}

fn count(m: &Map<String, Value>, path: &str, keyword: &str) -> Result<Option<u32>, SchemaError> {
    let Some(v) = m.get(keyword) else { return Ok(None) };
    let n = match v {
        Value::Number(n) => {
            n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0).map(|f| f as u64))
        }
        _ => None,
    };
    match n {
        Some(n) => Ok(Some(u32::try_from(n).unwrap_or(u32::MAX))),
        None => Err(SchemaError::new(
            format!("{path}/{keyword}"),
            format!("\"{keyword}\" at {} must be a non-negative integer", at(path)),
        )),
    }
}

fn bounds(m: &Map<String, Value>, path: &str, min_kw: &str, max_kw: &str) -> Result<(u32, u32), SchemaError> {
    let min = count(m, path, min_kw)?.unwrap_or(0);
    let max = count(m, path, max_kw)?.unwrap_or(u32::MAX);
    if min > max {
        return Err(SchemaError::new(
            format!("{path}/{min_kw}"),
            format!("\"{min_kw}\" ({min}) is greater than \"{max_kw}\" ({max}) at {}", at(path)),
        ));
    }
    Ok((min, max))
}

/// Keep only the `enum`/`const` values the rest of their schema accepts. Repeated until nothing
/// changes, since a base schema may itself contain literal nodes.
fn filter_literals(g: &mut JsonGrammar) {
    loop {
        let mut changed = false;
        for id in 0..g.nodes.len() {
            let Some(Node::Literals { values, base }) = g.nodes.get(id) else { continue };
            let base = *base;
            let kept: Vec<Box<[u8]>> = values
                .iter()
                .filter(|v| {
                    let mut state = State::new(base);
                    state.feed(g, v) && state.is_complete(g)
                })
                .cloned()
                .collect();
            if kept.len() != values.len() {
                changed = true;
                if let Some(Node::Literals { values, .. }) = g.nodes.get_mut(id) {
                    *values = kept;
                }
            }
        }
        if !changed {
            return;
        }
    }
}
