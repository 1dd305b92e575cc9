//! Constrained generation: a JSON Schema (a practical subset) compiled to a byte-level matcher.
//!
//! Used for OpenAI-style structured output (`response_format: json_schema`, `json_object`) and
//! forced tool calls: at each decode step the sampler asks [`JsonMatcher`] which candidate tokens
//! (byte strings) may come next and feeds the chosen one.
//!
//! Design, in short:
//! - [`JsonGrammar::compile`] turns the schema into an arena of nodes (typed node, literal set for
//!   `enum`/`const`, `anyOf` list). `$ref`s become node ids, so recursive schemas are plain cycles
//!   in the arena and compile without recursion at match time. Anything outside the supported
//!   subset is a [`SchemaError`] naming the keyword and its JSON pointer.
//! - [`JsonMatcher`] is a pushdown automaton over bytes. Its state is a small set (at most
//!   [`MAX_ALTERNATIVES`]) of alternatives, each a stack of `Copy` frames (object, key, array,
//!   string, number, literal, `true`/`false`/`null`) plus a word pool holding, per open object,
//!   the bitset of declared properties already used and the hashes of free keys. Only `anyOf`
//!   forks alternatives, lazily, on the first byte of a value, and identical alternatives merge.
//! - Every refusal happens at the earliest byte that can no longer lead to a valid document, so
//!   the sampler never reaches a dead end (outside the nesting cap): e.g. `,` is refused when no
//!   property is left to write, a space before `}` when a required property is missing.
//!
//! Policies where JSON Schema leaves room (all deliberate):
//! - Whitespace: at most one space (0x20, never newlines or tabs) right after `{`, `[`, `:`, `,`
//!   and right before `}`, `]`; none before `:`/`,` and none around the top-level value.
//! - Objects: with `properties` and no `additionalProperties`, unknown keys are refused (strict,
//!   as OpenAI's strict mode). With neither, any keys with any values. Declared keys must be written
//!   exactly as serde_json writes them (no gratuitous `\u` escapes); free keys (when
//!   `additionalProperties` allows them) are any strings that do not decode to a declared name and
//!   do not repeat a free key already written (tracked by a 64-bit hash: a collision can only
//!   refuse a key, never accept a duplicate). Properties come in any order; `required` names
//!   that are not in `properties` become declared properties with the `additionalProperties`
//!   schema (an error when that is `false`).
//! - A schema without `type` but with type-specific keywords (`properties`, `items`,
//!   `minLength`, ...) is taken to mean the corresponding type(s) only.
//! - `enum`/`const` values are matched byte for byte against their compact serde_json text, and
//!   only the values that also satisfy the rest of the schema are kept.
//! - Numbers: at most [`MAX_NUMBER_DIGITS`] digits in all and [`MAX_EXPONENT_DIGITS`] exponent
//!   digits (so serde_json always parses them as finite). `integer` means no fraction or exponent.
//! - Strings: `minLength`/`maxLength` count code points (an escape or a surrogate pair is one).
//!   The output is always valid UTF-8; raw control bytes and lone surrogate escapes are refused.
//! - Containers nest at most [`MAX_DEPTH`] deep; `anyOf` keeps at most [`MAX_ALTERNATIVES`] live
//!   alternatives (extra ones are dropped: still sound, possibly less permissive).

mod lexer;
mod matcher;
mod schema;

#[cfg(test)]
mod property_tests;
#[cfg(test)]
mod tests;

pub use matcher::JsonMatcher;
pub use schema::JsonGrammar;

/// Deepest nesting of objects and arrays the matcher accepts (a further `{` or `[` is refused).
pub const MAX_DEPTH: u16 = 64;
/// Most parse alternatives (from `anyOf`) kept alive at once.
pub const MAX_ALTERNATIVES: usize = 64;
/// Most digits in one number (integer, fraction and exponent digits together).
pub const MAX_NUMBER_DIGITS: u8 = 24;
/// Most digits in a number's exponent.
pub const MAX_EXPONENT_DIGITS: u8 = 2;
/// Most values one `enum` may list (every step matches the answer against each of them).
pub const MAX_ENUM_VALUES: usize = 500;
/// Most schema nodes one grammar may hold (properties, items, alternatives, definitions...):
/// the matcher's cost per token grows with the schema, and a request's schema is untrusted.
pub const MAX_NODES: usize = 5000;

/// A schema outside the supported subset, or an invalid one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SchemaError {
    /// JSON pointer of the offending place, e.g. `/properties/city/pattern` (`""` is the root).
    pub path: String,
    /// What is wrong, naming the keyword or feature and where it is.
    pub message: String,
}

impl SchemaError {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> SchemaError {
        SchemaError { path: path.into(), message: message.into() }
    }
}
