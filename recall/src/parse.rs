//! Uploaded files to plain text: plain text, Markdown, HTML and PDF.
//!
//! [`parse_document`] picks the format from the content type (or, when that is missing or generic, the file
//! extension) and returns a [`ParsedDocument`]: an optional title and the text, with paragraphs separated by
//! a blank line so that the chunker can respect them. Markup is dropped.

mod html;
mod markdown;
mod pdf;
mod tidy;

use serde::{Deserialize, Serialize};

use crate::error::{RecallError, Result};

/// The formats this crate parses, for error messages.
pub const SUPPORTED_TYPES: &str = "text/plain (.txt), text/markdown (.md, .markdown), text/html (.html, .htm), \
     application/pdf (.pdf)";

/// Content types that say nothing about the format: the file extension decides.
const GENERIC_CONTENT_TYPES: &[&str] = &["application/octet-stream", "binary/octet-stream", "application/unknown"];

/// A document turned into plain text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParsedDocument {
    /// The document's own title: the first Markdown heading, the HTML `<title>` (else first `<h1>`), the PDF's
    /// Title entry. `None` for plain text and where the document has none.
    pub title: Option<String>,
    /// The text: paragraphs separated by one blank line, no trailing spaces, `\n` line ends.
    pub text: String,
}

impl ParsedDocument {
    /// Tidies `text` and the title; an error when no text is left.
    fn new(title: Option<String>, text: &str) -> Result<Self> {
        let text = tidy::tidy_text(text);
        if text.is_empty() {
            return Err(RecallError::EmptyDocument);
        }
        let title = title.map(|t| tidy::one_line(&t)).filter(|t| !t.is_empty());
        Ok(ParsedDocument { title, text })
    }
}

/// The formats an upload can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocumentFormat {
    /// UTF-8 plain text.
    Text,
    /// CommonMark (with tables, strikethrough, task lists and front matter).
    Markdown,
    /// HTML or XHTML in UTF-8.
    Html,
    /// PDF with a text layer (no OCR).
    Pdf,
}

impl DocumentFormat {
    /// A short name for messages and logs.
    pub fn name(self) -> &'static str {
        match self {
            DocumentFormat::Text => "plain text",
            DocumentFormat::Markdown => "Markdown",
            DocumentFormat::Html => "HTML",
            DocumentFormat::Pdf => "PDF",
        }
    }

    /// The format of a MIME type such as `text/html; charset=utf-8`, if supported.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        match mime_essence(content_type).as_str() {
            "text/plain" => Some(DocumentFormat::Text),
            "text/markdown" | "text/x-markdown" => Some(DocumentFormat::Markdown),
            "text/html" | "application/xhtml+xml" => Some(DocumentFormat::Html),
            "application/pdf" | "application/x-pdf" => Some(DocumentFormat::Pdf),
            _ => None,
        }
    }

    /// The format of a file name by its extension, if supported.
    pub fn from_file_name(file_name: &str) -> Option<Self> {
        let (_, ext) = file_name.rsplit_once('.')?;
        match ext.to_ascii_lowercase().as_str() {
            "txt" | "text" => Some(DocumentFormat::Text),
            "md" | "markdown" | "mdown" | "mkd" => Some(DocumentFormat::Markdown),
            "html" | "htm" | "xhtml" => Some(DocumentFormat::Html),
            "pdf" => Some(DocumentFormat::Pdf),
            _ => None,
        }
    }

    /// Picks the format of an upload.
    ///
    /// A specific, supported content type wins, except that `text/plain` for a `.md` file is read as Markdown
    /// (many clients send that). A missing, generic (`application/octet-stream`) or unknown content type falls
    /// back to the file extension. Neither known: [`RecallError::UnsupportedType`].
    pub fn detect(content_type: Option<&str>, file_name: Option<&str>) -> Result<Self> {
        let by_name = file_name.and_then(DocumentFormat::from_file_name);
        let content_type = content_type.map(str::trim).filter(|c| !c.is_empty());
        if let Some(ct) = content_type {
            if let Some(format) = DocumentFormat::from_content_type(ct) {
                return Ok(match (format, by_name) {
                    (DocumentFormat::Text, Some(DocumentFormat::Markdown)) => DocumentFormat::Markdown,
                    _ => format,
                });
            }
        }
        if let Some(format) = by_name {
            return Ok(format);
        }
        let given = match (content_type, file_name) {
            (Some(ct), _) if !GENERIC_CONTENT_TYPES.contains(&mime_essence(ct).as_str()) => ct.to_string(),
            (_, Some(name)) => name.to_string(),
            (Some(ct), None) => ct.to_string(),
            (None, None) => "(no content type or file name)".to_string(),
        };
        Err(RecallError::UnsupportedType { given, supported: SUPPORTED_TYPES })
    }
}

/// `Text/HTML; charset=UTF-8` → `text/html`.
fn mime_essence(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

/// Parses an upload, choosing the format with [`DocumentFormat::detect`].
pub fn parse_document(bytes: &[u8], content_type: Option<&str>, file_name: Option<&str>) -> Result<ParsedDocument> {
    parse_as(DocumentFormat::detect(content_type, file_name)?, bytes)
}

/// Parses `bytes` as `format`.
#[tracing::instrument(skip(bytes), fields(bytes = bytes.len()))]
pub fn parse_as(format: DocumentFormat, bytes: &[u8]) -> Result<ParsedDocument> {
    match format {
        DocumentFormat::Text => ParsedDocument::new(None, utf8(format, bytes)?),
        DocumentFormat::Markdown => {
            let (title, text) = markdown::to_text(utf8(format, bytes)?);
            ParsedDocument::new(title, &text)
        }
        DocumentFormat::Html => {
            let (title, text) = html::to_text(utf8(format, bytes)?);
            ParsedDocument::new(title, &text)
        }
        DocumentFormat::Pdf => {
            let (title, text) = pdf::to_text(bytes)?;
            ParsedDocument::new(title, &text)
        }
    }
}

/// The bytes as UTF-8 without a byte-order mark, or [`RecallError::InvalidUtf8`].
fn utf8(format: DocumentFormat, bytes: &[u8]) -> Result<&str> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    std::str::from_utf8(bytes).map_err(|e| RecallError::InvalidUtf8 { format: format.name(), offset: e.valid_up_to() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_by_content_type_then_extension() {
        let d = DocumentFormat::detect;
        assert_eq!(d(Some("text/html; charset=utf-8"), None).ok(), Some(DocumentFormat::Html));
        assert_eq!(d(Some("Application/PDF"), Some("a.txt")).ok(), Some(DocumentFormat::Pdf));
        assert_eq!(d(Some("text/plain"), Some("notes.MD")).ok(), Some(DocumentFormat::Markdown));
        assert_eq!(d(Some("application/octet-stream"), Some("x.htm")).ok(), Some(DocumentFormat::Html));
        assert_eq!(d(None, Some("report.pdf")).ok(), Some(DocumentFormat::Pdf));
        assert_eq!(d(Some("application/x-weird"), Some("a.txt")).ok(), Some(DocumentFormat::Text));
    }

    #[test]
    fn unsupported_types_name_the_supported_ones() {
        let err = DocumentFormat::detect(Some("image/png"), Some("cat.png")).err();
        let Some(RecallError::UnsupportedType { given, supported }) = err else { panic!("expected UnsupportedType") };
        assert_eq!(given, "image/png");
        assert!(supported.contains("application/pdf"));
        let err = DocumentFormat::detect(Some("application/octet-stream"), Some("a.docx")).err();
        assert!(matches!(err, Some(RecallError::UnsupportedType { given, .. }) if given == "a.docx"));
        assert!(matches!(DocumentFormat::detect(None, None), Err(RecallError::UnsupportedType { .. })));
    }

    #[test]
    fn plain_text_must_be_utf8_and_not_empty() {
        let doc = parse_as(DocumentFormat::Text, "\u{feff}Hello\r\n\r\n\r\nworld  \r\n".as_bytes()).ok();
        assert_eq!(doc, Some(ParsedDocument { title: None, text: "Hello\n\nworld".into() }));
        let err = parse_as(DocumentFormat::Text, b"ok \xff\xfe bad").err();
        assert!(matches!(err, Some(RecallError::InvalidUtf8 { offset: 3, .. })), "{err:?}");
        assert!(matches!(parse_as(DocumentFormat::Text, b" \n\t\n"), Err(RecallError::EmptyDocument)));
    }
}
