//! PDF to plain text with pdf-extract (over the lopdf it re-exports). Only the text layer is read: a scanned PDF without one
//! yields [`RecallError::EmptyDocument`]. pdf-extract can panic on malformed input, so it runs under
//! `catch_unwind`: a corrupt file is an error, never a crash.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{RecallError, Result};

/// How far into the file the `%PDF-` header may start (the specification allows leading garbage).
const HEADER_SEARCH_BYTES: usize = 1024;

/// Returns (title, text).
pub(super) fn to_text(bytes: &[u8]) -> Result<(Option<String>, String)> {
    let head = &bytes[..bytes.len().min(HEADER_SEARCH_BYTES)];
    if !head.windows(5).any(|w| w == b"%PDF-") {
        return Err(RecallError::malformed("PDF", "no %PDF- header: not a PDF file"));
    }
    let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<(Option<String>, String)> {
        let mut document =
            pdf_extract::Document::load_mem(bytes).map_err(|e| RecallError::malformed("PDF", e.to_string()))?;
        // Many PDFs are encrypted with an empty user password (permissions only): open those.
        if document.is_encrypted() && document.decrypt("").is_err() {
            return Err(RecallError::malformed("PDF", "the file is encrypted with a password"));
        }
        let title = info_title(&document);
        let mut text = String::new();
        let mut output = pdf_extract::PlainTextOutput::new(&mut text);
        pdf_extract::output_doc(&document, &mut output).map_err(|e| RecallError::malformed("PDF", e.to_string()))?;
        Ok((title, text))
    }));
    match outcome {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown failure".to_string());
            Err(RecallError::malformed("PDF", format!("text extraction failed: {message}")))
        }
    }
}

/// The document information dictionary's Title, decoded from UTF-16BE (with its byte-order mark) or
/// PDFDocEncoding (read as Latin-1, which agrees on the printable range).
fn info_title(document: &pdf_extract::Document) -> Option<String> {
    let info = document.trailer.get(b"Info").ok()?;
    let info = match info {
        pdf_extract::Object::Reference(id) => document.get_object(*id).ok()?,
        other => other,
    };
    let bytes = info.as_dict().ok()?.get(b"Title").ok()?.as_str().ok()?;
    let title = match bytes.strip_prefix(&[0xFE, 0xFF]) {
        Some(utf16) => {
            let units: Vec<u16> = utf16.chunks_exact(2).map(|p| u16::from_be_bytes([p[0], p[1]])).collect();
            String::from_utf16_lossy(&units)
        }
        None => bytes.iter().map(|&b| b as char).collect(),
    };
    let title = title.trim().to_string();
    (!title.is_empty()).then_some(title)
}
