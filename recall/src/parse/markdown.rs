//! Markdown to plain text with pulldown-cmark: headings and paragraphs become blank-line separated blocks, list
//! items and table rows lines; emphasis, links, images, raw HTML and front matter markup are dropped (link text
//! and image alt text stay). The first heading is the title, unless the front matter names one.

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

/// Returns (title, text).
pub(super) fn to_text(source: &str) -> (Option<String>, String) {
    let options = Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_FOOTNOTES
        | Options::ENABLE_YAML_STYLE_METADATA_BLOCKS
        | Options::ENABLE_PLUSES_DELIMITED_METADATA_BLOCKS;
    let mut out = String::with_capacity(source.len());
    let mut title: Option<String> = None;
    let mut front_matter_title: Option<String> = None;
    // Text of the heading being read while no title is known yet.
    let mut heading: Option<String> = None;
    let mut in_metadata = false;
    for event in Parser::new_ext(source, options) {
        match event {
            Event::Start(Tag::Heading { .. }) => {
                block_break(&mut out);
                if title.is_none() {
                    heading = Some(String::new());
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some(h) = heading.take() {
                    if !h.trim().is_empty() {
                        title = Some(h);
                    }
                }
                block_break(&mut out);
            }
            Event::Start(Tag::MetadataBlock(_)) => in_metadata = true,
            Event::End(TagEnd::MetadataBlock(_)) => in_metadata = false,
            Event::Text(text) if in_metadata => {
                front_matter_title = front_matter_title.or_else(|| title_from_front_matter(&text));
            }
            Event::Text(text) | Event::Code(text) | Event::InlineMath(text) | Event::DisplayMath(text) => {
                out.push_str(&text);
                if let Some(h) = heading.as_mut() {
                    h.push_str(&text);
                }
            }
            Event::SoftBreak | Event::HardBreak => {
                out.push('\n');
                if let Some(h) = heading.as_mut() {
                    h.push(' ');
                }
            }
            Event::Rule => block_break(&mut out),
            Event::Start(tag) if starts_block(&tag) => block_break(&mut out),
            Event::End(TagEnd::Item | TagEnd::TableHead | TagEnd::TableRow) => out.push('\n'),
            Event::End(TagEnd::TableCell) => out.push_str(" | "),
            Event::End(tag) if ends_block(&tag) => block_break(&mut out),
            // Inline tags, raw HTML, footnote markers and task-list boxes are markup.
            _ => {}
        }
    }
    (front_matter_title.or(title), out)
}

/// Tags that open a block of their own.
fn starts_block(tag: &Tag<'_>) -> bool {
    matches!(
        tag,
        Tag::Paragraph | Tag::BlockQuote(_) | Tag::CodeBlock(_) | Tag::List(_) | Tag::Table(_) | Tag::HtmlBlock
    )
}

/// Tags whose end closes a block.
fn ends_block(tag: &TagEnd) -> bool {
    matches!(
        tag,
        TagEnd::Paragraph
            | TagEnd::BlockQuote(_)
            | TagEnd::CodeBlock
            | TagEnd::List(_)
            | TagEnd::Table
            | TagEnd::HtmlBlock
            | TagEnd::FootnoteDefinition
    )
}

/// Ends the current block with a blank line (tidying folds repeats).
fn block_break(out: &mut String) {
    if !out.is_empty() {
        out.push_str("\n\n");
    }
}

/// `title: Something` (YAML) or `title = "Something"` (TOML) in front matter.
fn title_from_front_matter(block: &str) -> Option<String> {
    block.lines().find_map(|line| {
        let line = line.trim();
        let rest = line.strip_prefix("title")?.trim_start();
        let value = rest.strip_prefix(':').or_else(|| rest.strip_prefix('='))?.trim();
        let value = value.trim_matches(|c| c == '"' || c == '\'').trim();
        (!value.is_empty()).then(|| value.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::tidy::tidy_text;

    #[test]
    fn drops_markup_and_keeps_blocks() {
        let md = "# Shoal *guide*\n\nFirst **bold** para\nwrapped [link](http://x).\n\n## Part 2\n\n- one\n- two\n\n\
                  | a | b |\n|---|---|\n| 1 | 2 |\n\n```rust\nfn main() {}\n```\n\n<div>raw</div>\n\n![alt text](i.png)\n";
        let (title, text) = to_text(md);
        assert_eq!(title.as_deref(), Some("Shoal guide"));
        assert_eq!(
            tidy_text(&text),
            "Shoal guide\n\nFirst bold para\nwrapped link.\n\nPart 2\n\none\ntwo\n\na | b |\n1 | 2 |\n\n\
             fn main() {}\n\nalt text"
        );
    }

    #[test]
    fn front_matter_title_wins_and_is_not_text() {
        let (title, text) = to_text("---\ntitle: \"Handbook\"\nauthor: me\n---\n\n# 第一章\n\n正文。\n");
        assert_eq!(title.as_deref(), Some("Handbook"));
        assert_eq!(tidy_text(&text), "第一章\n\n正文。");
    }
}
