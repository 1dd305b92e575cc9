//! Chunking that respects paragraphs and sentences in English and Chinese, sized in tokens of the embedding
//! model.
//!
//! The text is cut into paragraphs (separated by a blank line) and paragraphs into sentences (ending in
//! `. ! ?` followed by a space, or in `。！？；…` and their full-width kin, with any closing quotes or
//! brackets). A sentence longer than `max_tokens` is split at character boundaries (at a space where one is
//! near). Sentences are then packed greedily into chunks of at most `max_tokens`, counted by the caller's
//! counter on the exact chunk text; a paragraph that would straddle two chunks but fits in one starts a new
//! chunk once the current one is half full. Each chunk after the first repeats whole trailing sentences of
//! the one before, up to `overlap_tokens`.
//!
//! A chunk is a contiguous slice of the text and records its byte range. The result depends only on the text,
//! the configuration and the counter.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::{RecallError, Result};

/// Default chunk size: what small sentence-embedding models (MiniLM: 256 word pieces) read whole.
pub const DEFAULT_MAX_TOKENS: usize = 256;
/// Default overlap between consecutive chunks.
pub const DEFAULT_OVERLAP_TOKENS: usize = 32;

/// Chunk sizes, in tokens of the embedding model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkConfig {
    /// Most tokens in one chunk (the counter's count of the chunk text).
    pub max_tokens: usize,
    /// Most tokens of trailing sentences repeated at the start of the next chunk; 0 for none.
    pub overlap_tokens: usize,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        ChunkConfig { max_tokens: DEFAULT_MAX_TOKENS, overlap_tokens: DEFAULT_OVERLAP_TOKENS }
    }
}

impl ChunkConfig {
    /// Checks that `max_tokens` is positive and `overlap_tokens` smaller than it.
    pub fn validate(&self) -> Result<()> {
        if self.max_tokens == 0 {
            return Err(RecallError::InvalidConfig("max_tokens must be at least 1".into()));
        }
        if self.overlap_tokens >= self.max_tokens {
            return Err(RecallError::InvalidConfig(format!(
                "overlap_tokens ({}) must be smaller than max_tokens ({})",
                self.overlap_tokens, self.max_tokens
            )));
        }
        Ok(())
    }
}

/// One chunk: its text and where it lies in the document text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkText {
    /// The chunk's text: exactly `document_text[start..end]`.
    pub text: String,
    /// Byte offset of the first byte in the document text.
    pub start: usize,
    /// Byte offset one past the last byte.
    pub end: usize,
    /// The counter's count for `text`.
    pub tokens: usize,
}

impl ChunkText {
    /// The byte range in the document text.
    pub fn range(&self) -> Range<usize> {
        self.start..self.end
    }
}

/// A sentence (or a piece of an over-long one): a byte range and its paragraph.
#[derive(Debug, Clone, Copy)]
struct Unit {
    start: usize,
    end: usize,
    paragraph: usize,
}

/// Cuts `text` into chunks. `count_tokens` returns the number of embedding-model tokens in a string.
#[tracing::instrument(skip_all, fields(bytes = text.len(), max = config.max_tokens))]
pub fn chunk_text(text: &str, config: &ChunkConfig, count_tokens: &dyn Fn(&str) -> usize) -> Result<Vec<ChunkText>> {
    config.validate()?;
    let max = config.max_tokens;
    let mut units = Vec::new();
    for (paragraph, range) in paragraphs(text).into_iter().enumerate() {
        for sentence in sentences(text, range) {
            for piece in split_long(text, sentence, max, count_tokens) {
                units.push(Unit { start: piece.start, end: piece.end, paragraph });
            }
        }
    }
    let mut packer = Packer { text, units: &units, count: count_tokens, config, chunks: Vec::new() };
    packer.pack();
    Ok(packer.chunks)
}

/// Greedy packing of units into chunks.
struct Packer<'a> {
    text: &'a str,
    units: &'a [Unit],
    count: &'a dyn Fn(&str) -> usize,
    config: &'a ChunkConfig,
    chunks: Vec<ChunkText>,
}

impl Packer<'_> {
    /// Tokens in units `first..=last`, as one slice of the text.
    fn span_tokens(&self, first: usize, last: usize) -> usize {
        (self.count)(&self.text[self.units[first].start..self.units[last].end])
    }

    /// Index of the last unit of the paragraph that unit `i` is in.
    fn paragraph_end(&self, i: usize) -> usize {
        let p = self.units[i].paragraph;
        let mut last = i;
        while last + 1 < self.units.len() && self.units[last + 1].paragraph == p {
            last += 1;
        }
        last
    }

    fn pack(&mut self) {
        let n = self.units.len();
        let max = self.config.max_tokens;
        // The current chunk is units[start..end] (empty when start == end), holding `tokens` tokens; units
        // before `carried_end` were repeated from the previous chunk.
        let (mut start, mut end, mut tokens, mut carried_end) = (0usize, 0usize, 0usize, 0usize);
        let mut i = 0;
        while i < n {
            if start == end {
                // A unit always fits alone: over-long sentences were split.
                start = i;
                end = i + 1;
                tokens = self.span_tokens(i, i);
                i += 1;
                continue;
            }
            let with_next = self.span_tokens(start, i);
            // The paragraph that unit i opens, when it fits in a chunk of its own: it is kept whole.
            let whole_paragraph = if self.units[i].paragraph != self.units[i - 1].paragraph {
                let p_end = self.paragraph_end(i);
                (p_end > i && self.span_tokens(i, p_end) <= max).then_some(p_end)
            } else {
                None
            };
            let mut flush = with_next > max;
            if !flush && tokens * 2 >= max {
                if let Some(p_end) = whole_paragraph {
                    flush = self.span_tokens(start, p_end) > max;
                }
            }
            if !flush {
                end = i + 1;
                tokens = with_next;
                i += 1;
                continue;
            }
            if end <= carried_end {
                // Nothing but overlap: drop it rather than emit a repeat.
                start = end;
                continue;
            }
            self.emit(start, end, tokens);
            let first = self.overlap_start(start, end, whole_paragraph.unwrap_or(i));
            carried_end = end;
            start = first;
            if first < end {
                tokens = self.span_tokens(first, end - 1);
            }
        }
        if start < end {
            self.emit(start, end, tokens);
        }
    }

    /// First unit of the overlap carried from chunk `start..end` into the next one: whole trailing units of at
    /// most `overlap_tokens`, never the whole chunk, that leave room for the units `end..=block_end` that must
    /// follow. Returns `end` for no overlap.
    fn overlap_start(&self, start: usize, end: usize, block_end: usize) -> usize {
        let budget = self.config.overlap_tokens;
        if budget == 0 {
            return end;
        }
        let mut first = end;
        while first > start + 1 && self.span_tokens(first - 1, end - 1) <= budget {
            first -= 1;
        }
        while first < end && self.span_tokens(first, block_end) > self.config.max_tokens {
            first += 1;
        }
        first
    }

    fn emit(&mut self, start: usize, end: usize, tokens: usize) {
        let (from, to) = (self.units[start].start, self.units[end - 1].end);
        self.chunks.push(ChunkText { text: self.text[from..to].to_string(), start: from, end: to, tokens });
    }
}

/// Paragraphs: maximal runs of non-blank lines, trimmed.
fn paragraphs(text: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut current: Option<Range<usize>> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let line_start = offset;
        offset += line.len();
        let trimmed_start = line.len() - line.trim_start().len();
        let content = line.trim();
        if content.is_empty() {
            out.extend(current.take());
            continue;
        }
        let content_start = line_start + trimmed_start;
        let content_end = content_start + content.len();
        match current.as_mut() {
            Some(range) => range.end = content_end,
            None => current = Some(content_start..content_end),
        }
    }
    out.extend(current);
    out
}

/// Sentence-ending punctuation that ends a sentence wherever it stands (Chinese and full-width forms).
fn is_cjk_terminator(c: char) -> bool {
    matches!(c, '。' | '！' | '？' | '；' | '…' | '．' | '｡' | '‼' | '⁇' | '⁈' | '⁉')
}

/// Sentence-ending punctuation that ends a sentence only before a space, the end of the paragraph or CJK text.
fn is_latin_terminator(c: char) -> bool {
    matches!(c, '.' | '!' | '?')
}

/// Closing quotes and brackets that belong to the sentence they follow.
fn is_closer(c: char) -> bool {
    matches!(
        c,
        '"' | '\''
            | ')'
            | ']'
            | '}'
            | '”'
            | '’'
            | '）'
            | '】'
            | '」'
            | '』'
            | '》'
            | '〉'
            | '〕'
            | '］'
            | '｝'
            | '＂'
            | '＇'
    )
}

/// Whether `c` is written without spaces between words (so a `.` before it still ends a sentence).
fn is_cjk_char(c: char) -> bool {
    matches!(c, '\u{2E80}'..='\u{9FFF}' | '\u{AC00}'..='\u{D7AF}' | '\u{F900}'..='\u{FAFF}' | '\u{FF00}'..='\u{FFEF}'
        | '\u{20000}'..='\u{2FA1F}')
}

/// The sentences of the paragraph at `range`, trimmed.
fn sentences(text: &str, range: Range<usize>) -> Vec<Range<usize>> {
    let paragraph = &text[range.clone()];
    let base = range.start;
    let mut out = Vec::new();
    let mut chars = paragraph.char_indices().peekable();
    let mut start: Option<usize> = None;
    while let Some((i, c)) = chars.next() {
        if start.is_none() {
            if c.is_whitespace() {
                continue;
            }
            start = Some(i);
        }
        let cjk = is_cjk_terminator(c);
        if !cjk && !is_latin_terminator(c) {
            continue;
        }
        // Swallow repeated terminators ("?!", "……") and closing quotes or brackets.
        let mut end = i + c.len_utf8();
        let mut any_cjk = cjk;
        while let Some(&(j, next)) = chars.peek() {
            if is_cjk_terminator(next) || is_latin_terminator(next) || is_closer(next) {
                any_cjk |= is_cjk_terminator(next);
                end = j + next.len_utf8();
                chars.next();
            } else {
                break;
            }
        }
        let boundary = any_cjk
            || match chars.peek() {
                None => true,
                Some(&(_, next)) => next.is_whitespace() || is_cjk_char(next),
            };
        if boundary {
            if let Some(s) = start.take() {
                out.push(base + s..base + end);
            }
        }
    }
    if let Some(s) = start {
        let rest = paragraph[s..].trim_end();
        if !rest.is_empty() {
            out.push(base + s..base + s + rest.len());
        }
    }
    out
}

/// Splits the sentence at `range` into pieces of at most `max` tokens, at character boundaries, preferring a
/// space in the second half of a piece. A single character over `max` still makes a piece (progress first).
fn split_long(text: &str, range: Range<usize>, max: usize, count: &dyn Fn(&str) -> usize) -> Vec<Range<usize>> {
    if count(&text[range.clone()]) <= max {
        return vec![range];
    }
    let mut out = Vec::new();
    let mut start = range.start;
    while start < range.end {
        let rest = &text[start..range.end];
        if count(rest) <= max {
            out.push(start..range.end);
            break;
        }
        // Char boundaries after the first character: candidate piece ends.
        let ends: Vec<usize> = rest.char_indices().skip(1).map(|(i, _)| start + i).chain([range.end]).collect();
        // Largest end whose prefix fits (token counts grow with the prefix); at least one character.
        let (mut lo, mut hi) = (0usize, ends.len() - 1);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if count(&text[start..ends[mid]]) <= max {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let mut cut = ends[lo];
        let piece = &text[start..cut];
        if let Some(space) = piece.rfind(char::is_whitespace) {
            if space > 0 && space >= piece.len() / 2 {
                cut = start + space;
            }
        }
        let piece = text[start..cut].trim_end();
        if !piece.is_empty() {
            out.push(start..start + piece.len());
        }
        // Skip the whitespace the cut landed on.
        let next = &text[cut..range.end];
        start = cut + (next.len() - next.trim_start().len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> usize {
        s.split_whitespace().count()
    }

    fn cjk_chars(s: &str) -> usize {
        s.chars().filter(|c| !c.is_whitespace()).count()
    }

    fn cfg(max_tokens: usize, overlap_tokens: usize) -> ChunkConfig {
        ChunkConfig { max_tokens, overlap_tokens }
    }

    fn texts(chunks: &[ChunkText]) -> Vec<&str> {
        chunks.iter().map(|c| c.text.as_str()).collect()
    }

    /// Every chunk is its slice, fits, and the chunks cover all non-space text in order.
    fn check_invariants(text: &str, chunks: &[ChunkText], max: usize, count: &dyn Fn(&str) -> usize) {
        let mut covered = vec![false; text.len()];
        let mut last_start = 0;
        for c in chunks {
            assert_eq!(&text[c.range()], c.text);
            assert_eq!(count(&c.text), c.tokens);
            assert!(c.tokens <= max || c.text.chars().count() == 1, "chunk over max: {c:?}");
            assert!(c.start >= last_start, "chunks out of order");
            last_start = c.start;
            covered[c.range()].iter_mut().for_each(|b| *b = true);
        }
        for (i, ch) in text.char_indices() {
            assert!(ch.is_whitespace() || covered[i], "byte {i} ({ch:?}) not in any chunk");
        }
    }

    #[test]
    fn english_sentences_and_paragraphs() {
        let text = "Shoal routes requests. It also routes recalls! Does it batch? Yes.\n\n\
                    The coordinator runs raft. Nodes host shards.";
        let chunks = chunk_text(text, &cfg(8, 0), &words).expect("chunk");
        assert_eq!(
            texts(&chunks),
            [
                "Shoal routes requests. It also routes recalls!",
                "Does it batch? Yes.",
                "The coordinator runs raft. Nodes host shards."
            ]
        );
        check_invariants(text, &chunks, 8, &words);
    }

    #[test]
    fn decimals_and_closing_quotes_do_not_split() {
        let text = "Pi is 3.14 roughly. He said \"stop.\" Then left.";
        let ranges = sentences(text, 0..text.len());
        let got: Vec<&str> = ranges.into_iter().map(|r| &text[r]).collect();
        assert_eq!(got, ["Pi is 3.14 roughly.", "He said \"stop.\"", "Then left."]);
    }

    #[test]
    fn chinese_sentences_split_on_full_width_punctuation() {
        let text = "北京是中国的首都。上海是最大的城市！你去过吗？我去过；很喜欢……\n\n第二段落”在这里“。";
        let ranges = sentences(text, paragraphs(text)[0].clone());
        let got: Vec<&str> = ranges.into_iter().map(|r| &text[r]).collect();
        assert_eq!(got, ["北京是中国的首都。", "上海是最大的城市！", "你去过吗？", "我去过；", "很喜欢……"]);
        let chunks = chunk_text(text, &cfg(20, 0), &cjk_chars).expect("chunk");
        assert_eq!(
            texts(&chunks),
            ["北京是中国的首都。上海是最大的城市！", "你去过吗？我去过；很喜欢……", "第二段落”在这里“。"]
        );
        check_invariants(text, &chunks, 20, &cjk_chars);
    }

    #[test]
    fn mixed_english_and_chinese() {
        let text = "Shoal 是一个 AI 服务网格。It routes recalls.下一句。";
        let got: Vec<&str> = sentences(text, 0..text.len()).into_iter().map(|r| &text[r]).collect();
        assert_eq!(got, ["Shoal 是一个 AI 服务网格。", "It routes recalls.", "下一句。"]);
    }

    #[test]
    fn overlap_repeats_whole_trailing_sentences() {
        let text = "One two three. Four five six. Seven eight nine. Ten eleven twelve. Thirteen fourteen.";
        let chunks = chunk_text(text, &cfg(9, 3), &words).expect("chunk");
        assert_eq!(
            texts(&chunks),
            [
                "One two three. Four five six. Seven eight nine.",
                "Seven eight nine. Ten eleven twelve. Thirteen fourteen."
            ]
        );
        check_invariants(text, &chunks, 9, &words);
        // An overlap budget smaller than any sentence repeats nothing.
        let chunks = chunk_text(text, &cfg(9, 2), &words).expect("chunk");
        assert_eq!(chunks[1].text, "Ten eleven twelve. Thirteen fourteen.");
    }

    #[test]
    fn a_paragraph_that_fits_alone_starts_a_new_chunk() {
        let text = "Alpha beta gamma delta. Epsilon zeta.\n\nEta theta iota. Kappa lambda mu.\n\nNu xi.";
        let chunks = chunk_text(text, &cfg(7, 0), &words).expect("chunk");
        assert_eq!(
            texts(&chunks),
            ["Alpha beta gamma delta. Epsilon zeta.", "Eta theta iota. Kappa lambda mu.", "Nu xi."]
        );
        // Small paragraphs share a chunk.
        let chunks = chunk_text(text, &cfg(20, 0), &words).expect("chunk");
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].text, text);
    }

    #[test]
    fn over_long_sentences_split_at_char_boundaries() {
        let text = "这是一个没有标点符号的很长很长很长的句子它一直持续下去直到超过限制为止";
        let chunks = chunk_text(text, &cfg(10, 0), &cjk_chars).expect("chunk");
        assert!(chunks.len() >= 4, "{chunks:?}");
        assert!(chunks.iter().all(|c| c.tokens == 10 || c.end == text.len()));
        check_invariants(text, &chunks, 10, &cjk_chars);
        // English prefers to cut at a space.
        let text = "aaaa bbbb cccc dddd eeee ffff gggg";
        let by_chars = |s: &str| s.chars().count();
        let chunks = chunk_text(text, &cfg(12, 0), &by_chars).expect("chunk");
        assert_eq!(texts(&chunks), ["aaaa bbbb", "cccc dddd", "eeee ffff", "gggg"]);
        check_invariants(text, &chunks, 12, &by_chars);
    }

    #[test]
    fn a_counter_that_counts_one_char_over_max_still_progresses() {
        let text = "abc";
        let heavy = |s: &str| s.chars().count() * 5;
        let chunks = chunk_text(text, &cfg(2, 0), &heavy).expect("chunk");
        assert_eq!(texts(&chunks), ["a", "b", "c"]);
    }

    #[test]
    fn deterministic_and_validated() {
        let text = "Repeat me. ".repeat(50);
        let a = chunk_text(&text, &cfg(16, 4), &words).expect("chunk");
        let b = chunk_text(&text, &cfg(16, 4), &words).expect("chunk");
        assert_eq!(a, b);
        check_invariants(&text, &a, 16, &words);
        assert!(chunk_text("", &cfg(16, 4), &words).expect("chunk").is_empty());
        assert!(matches!(chunk_text("x", &cfg(0, 0), &words), Err(RecallError::InvalidConfig(_))));
        assert!(matches!(chunk_text("x", &cfg(4, 4), &words), Err(RecallError::InvalidConfig(_))));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn piece() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "word",
                "Shoal",
                "3.14",
                ". ",
                "! ",
                "? ",
                " ",
                " ",
                "\n",
                "\n\n",
                "中文",
                "句子。",
                "问题？",
                "”",
                "…",
                "e.g.",
                "x",
                "長い",
            ])
        }

        proptest! {
            #[test]
            fn chunks_cover_the_text_within_budget(
                pieces in prop::collection::vec(piece(), 0..120),
                max in 1usize..30,
                overlap_frac in 0usize..100,
            ) {
                let text: String = pieces.concat();
                let overlap = (max - 1) * overlap_frac / 100;
                let count = |s: &str| s.chars().filter(|c| !c.is_whitespace()).count();
                let chunks = chunk_text(&text, &cfg(max, overlap), &count).expect("chunk");
                check_invariants(&text, &chunks, max, &count);
            }
        }
    }
}
