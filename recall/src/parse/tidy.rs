//! Whitespace clean-up shared by every format.

/// Normalises extracted text: `\n` line ends, control characters dropped, trailing spaces trimmed, runs of blank
/// lines folded into one blank line (the paragraph separator), no leading or trailing blank lines.
pub(crate) fn tidy_text(text: &str) -> String {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut out = String::with_capacity(text.len());
    let mut blank_run = 0usize;
    for line in text.split('\n') {
        let line: String = line
            .chars()
            .map(|c| if c == '\t' || c == '\u{a0}' || c == '\u{3000}' { ' ' } else { c })
            .filter(|c| !c.is_control() && *c != '\u{feff}')
            .collect();
        let line = line.trim_end();
        if line.trim().is_empty() {
            blank_run += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_run > 0 { "\n\n" } else { "\n" });
        }
        blank_run = 0;
        out.push_str(line);
    }
    out
}

/// A title on one line: whitespace runs become one space, trimmed.
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_blank_lines_and_trims() {
        assert_eq!(tidy_text("\n\n a \t\r\n\r\n\n\nb\u{0}c\n  \n"), " a\n\nbc");
        assert_eq!(tidy_text("x\ny"), "x\ny");
        assert_eq!(tidy_text(" \n\u{3000}\n"), "");
        assert_eq!(one_line("  A \n title\t"), "A title");
    }
}
