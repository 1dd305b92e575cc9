//! A tantivy tokenizer for mixed English and Chinese text.
//!
//! Runs of Han ideographs (and kana) are segmented by jieba in search mode (a long word also yields its
//! dictionary sub-words, so "中华人民共和国" matches "共和国"); runs of other letters and digits are words
//! on their own. The analyzer then drops over-long tokens, lower-cases and applies the English stemmer
//! (which leaves CJK tokens alone), so "Founded" matches "founding" and one field serves both languages.

use std::sync::OnceLock;

use jieba_rs::{Jieba, TokenizeMode};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, Stemmer, TextAnalyzer, Token, TokenStream, Tokenizer,
};

/// The name the analyzer is registered under in the index.
pub(crate) const TOKENIZER_NAME: &str = "shoal_mixed";
/// Tokens longer than this (bytes) are dropped: they are noise, not words.
const MAX_TOKEN_BYTES: usize = 64;

/// jieba with its default dictionary, loaded once per process (it takes a moment).
fn jieba() -> &'static Jieba {
    static JIEBA: OnceLock<Jieba> = OnceLock::new();
    JIEBA.get_or_init(Jieba::new)
}

/// The analyzer used at index and query time.
pub(crate) fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(MixedTokenizer)
        .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
        .filter(LowerCaser)
        .filter(Stemmer::new(Language::English))
        .build()
}

/// The analyzed terms of `text`, in order (repeats kept).
pub(crate) fn terms(text: &str) -> Vec<String> {
    let mut analyzer = analyzer();
    let mut stream = analyzer.token_stream(text);
    let mut out = Vec::new();
    while stream.advance() {
        out.push(stream.token().text.clone());
    }
    out
}

/// Whether `c` is written without spaces between words and so needs a segmenter.
fn needs_segmenter(c: char) -> bool {
    matches!(c,
        '\u{3040}'..='\u{30FF}'          // hiragana, katakana
        | '\u{3400}'..='\u{4DBF}'        // CJK extension A
        | '\u{4E00}'..='\u{9FFF}'        // CJK unified ideographs
        | '\u{F900}'..='\u{FAFF}'        // compatibility ideographs
        | '\u{20000}'..='\u{2FA1F}') // extensions B and later
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Segmented,
    Word,
    Separator,
}

fn class(c: char) -> Class {
    if needs_segmenter(c) {
        Class::Segmented
    } else if c.is_alphanumeric() {
        Class::Word
    } else {
        Class::Separator
    }
}

/// Splits `text` into tokens with byte offsets and positions.
fn segment(text: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        let kind = class(c);
        let mut end = start + c.len_utf8();
        while let Some(&(i, next)) = chars.peek() {
            if class(next) != kind {
                break;
            }
            end = i + next.len_utf8();
            chars.next();
        }
        let run = &text[start..end];
        match kind {
            Class::Separator => {}
            Class::Word => push_token(&mut tokens, start, run),
            Class::Segmented => {
                for token in jieba().tokenize(run, TokenizeMode::Search, true) {
                    if token.word.chars().any(char::is_alphanumeric) {
                        push_token(&mut tokens, start + token.byte_start, token.word);
                    }
                }
            }
        }
    }
    tokens
}

fn push_token(tokens: &mut Vec<Token>, from: usize, word: &str) {
    let position = tokens.len();
    tokens.push(Token {
        offset_from: from,
        offset_to: from + word.len(),
        position,
        text: word.to_string(),
        position_length: 1,
    });
}

/// The tokenizer registered with tantivy.
#[derive(Clone, Copy, Default)]
pub(crate) struct MixedTokenizer;

impl Tokenizer for MixedTokenizer {
    type TokenStream<'a> = VecTokenStream;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> VecTokenStream {
        VecTokenStream { tokens: segment(text), next: 0, empty: Token::default() }
    }
}

/// Tokens computed up front, handed out one by one.
pub(crate) struct VecTokenStream {
    tokens: Vec<Token>,
    /// Index of the token after the current one.
    next: usize,
    /// Returned by `token()` before the first `advance()` or on an empty stream.
    empty: Token,
}

impl TokenStream for VecTokenStream {
    fn advance(&mut self) -> bool {
        if self.next < self.tokens.len() {
            self.next += 1;
            true
        } else {
            false
        }
    }

    fn token(&self) -> &Token {
        match self.next.checked_sub(1) {
            Some(i) => &self.tokens[i],
            None => &self.empty,
        }
    }

    fn token_mut(&mut self) -> &mut Token {
        match self.next.checked_sub(1) {
            Some(i) => &mut self.tokens[i],
            None => &mut self.empty,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_words_are_lowercased_and_stemmed() {
        assert_eq!(terms("The Founders founded it, in 1998!"), ["the", "founder", "found", "it", "in", "1998"]);
    }

    #[test]
    fn chinese_is_segmented_with_sub_words() {
        let t = terms("中华人民共和国成立于1949年。");
        for expected in ["中华", "人民", "共和国", "中华人民共和国", "成立", "1949", "年"] {
            assert!(t.iter().any(|x| x == expected), "{expected} missing from {t:?}");
        }
        assert!(!t.iter().any(|x| x == "。"));
    }

    #[test]
    fn offsets_point_into_the_text() {
        let text = "Shoal 支持中文检索 and English.";
        for token in segment(text) {
            assert_eq!(&text[token.offset_from..token.offset_to], token.text);
        }
    }
}
