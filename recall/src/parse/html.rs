//! HTML to plain text with scraper (html5ever): script, style and other non-content elements are dropped,
//! block elements become blank-line separated paragraphs, list items and table rows lines, `<br>` a line break,
//! whitespace inside text collapses as a browser would (except in `<pre>`). The title is `<title>`, else the
//! first `<h1>`.

use ego_tree::iter::Edge;
use scraper::{Html, Node, Selector};

/// Elements whose content is never text a reader sees.
const SKIPPED: &[&str] = &[
    "script", "style", "noscript", "template", "head", "title", "iframe", "object", "embed", "svg", "math", "canvas",
    "select", "button",
];

/// Elements that form a paragraph-like block.
const PARAGRAPH_BLOCKS: &[&str] = &[
    "p",
    "div",
    "section",
    "article",
    "main",
    "header",
    "footer",
    "nav",
    "aside",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "blockquote",
    "pre",
    "table",
    "ul",
    "ol",
    "dl",
    "figure",
    "figcaption",
    "form",
    "fieldset",
    "address",
    "details",
    "summary",
    "hr",
    "caption",
    "body",
];

/// Elements that end a line but not a paragraph.
const LINE_BLOCKS: &[&str] = &["li", "tr", "dt", "dd", "br", "option"];

/// Table cells: separated by ` | ` within a row.
const CELLS: &[&str] = &["td", "th"];

/// Returns (title, text).
pub(super) fn to_text(source: &str) -> (Option<String>, String) {
    let document = Html::parse_document(source);
    let title = first_text(&document, "title").or_else(|| first_text(&document, "h1"));
    let mut out = TextOut::default();
    let mut skip_depth = 0usize;
    let mut pre_depth = 0usize;
    for edge in document.tree.root().traverse() {
        match edge {
            Edge::Open(node) => match node.value() {
                Node::Element(element) => {
                    let name = element.name();
                    if SKIPPED.contains(&name) {
                        skip_depth += 1;
                    } else if skip_depth == 0 {
                        if name == "pre" {
                            pre_depth += 1;
                        }
                        out.open(name);
                    }
                }
                Node::Text(text) if skip_depth == 0 => out.text(text, pre_depth > 0),
                _ => {}
            },
            Edge::Close(node) => {
                if let Node::Element(element) = node.value() {
                    let name = element.name();
                    if SKIPPED.contains(&name) {
                        skip_depth = skip_depth.saturating_sub(1);
                    } else if skip_depth == 0 {
                        if name == "pre" {
                            pre_depth = pre_depth.saturating_sub(1);
                        }
                        out.close(name);
                    }
                }
            }
        }
    }
    (title, out.finish())
}

/// The text of the first `tag` element, if it has any.
fn first_text(document: &Html, tag: &str) -> Option<String> {
    let selector = Selector::parse(tag).ok()?;
    let element = document.select(&selector).next()?;
    let text = element.text().collect::<Vec<_>>().join(" ");
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    (!text.is_empty()).then_some(text)
}

/// What separates the last text written from the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
enum Pending {
    #[default]
    Nothing,
    Space,
    Cell,
    Line,
    Paragraph,
}

/// The text being built, with the separator owed before the next piece of text.
#[derive(Default)]
struct TextOut {
    buf: String,
    pending: Pending,
}

impl TextOut {
    fn owe(&mut self, separator: Pending) {
        self.pending = self.pending.max(separator);
    }

    fn open(&mut self, name: &str) {
        if PARAGRAPH_BLOCKS.contains(&name) {
            self.owe(Pending::Paragraph);
        } else if LINE_BLOCKS.contains(&name) {
            self.owe(Pending::Line);
        }
    }

    fn close(&mut self, name: &str) {
        if PARAGRAPH_BLOCKS.contains(&name) {
            self.owe(Pending::Paragraph);
        } else if LINE_BLOCKS.contains(&name) {
            self.owe(Pending::Line);
        } else if CELLS.contains(&name) {
            self.owe(Pending::Cell);
        }
    }

    fn text(&mut self, text: &str, preformatted: bool) {
        if preformatted {
            self.flush_pending();
            self.buf.push_str(text);
            return;
        }
        // Collapse whitespace as HTML renders it; leading or trailing whitespace owes a space.
        if text.starts_with(char::is_whitespace) {
            self.owe(Pending::Space);
        }
        let mut words = text.split_whitespace().peekable();
        if words.peek().is_none() {
            return;
        }
        self.flush_pending();
        let mut first = true;
        for word in words {
            if !first {
                self.buf.push(' ');
            }
            self.buf.push_str(word);
            first = false;
        }
        if text.ends_with(char::is_whitespace) {
            self.owe(Pending::Space);
        }
    }

    fn flush_pending(&mut self) {
        if !self.buf.is_empty() {
            match self.pending {
                Pending::Nothing => {}
                Pending::Space => self.buf.push(' '),
                Pending::Cell => self.buf.push_str(" | "),
                Pending::Line => self.buf.push('\n'),
                Pending::Paragraph => self.buf.push_str("\n\n"),
            }
        }
        self.pending = Pending::Nothing;
    }

    fn finish(self) -> String {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::tidy::tidy_text;

    #[test]
    fn drops_scripts_and_keeps_blocks() {
        let html = r#"<!doctype html><html><head><title> The  Shoal
            manual </title><style>p { color: red }</style><script>var x = "<p>no</p>";</script></head>
            <body><h1>Welcome</h1><p>Shoal   serves <b>models</b>&amp;
            recalls.</p><ul><li>one</li><li>two</li></ul>
            <table><tr><th>k</th><th>v</th></tr><tr><td>a</td><td>1</td></tr></table>
            <p>line<br>break</p><pre>  keep
   spaces</pre><noscript>enable js</noscript><p>中文段落。</p></body></html>"#;
        let (title, text) = to_text(html);
        assert_eq!(title.as_deref(), Some("The Shoal manual"));
        assert_eq!(
            tidy_text(&text),
            "Welcome\n\nShoal serves models& recalls.\n\none\ntwo\n\nk | v\na | 1\n\nline\nbreak\n\n  keep\n   spaces\n\n中文段落。"
        );
    }

    #[test]
    fn first_h1_is_the_title_without_title_element() {
        let (title, text) = to_text("<h1>Heading <i>one</i></h1><div>body</div>");
        assert_eq!(title.as_deref(), Some("Heading one"));
        assert_eq!(tidy_text(&text), "Heading one\n\nbody");
    }
}
