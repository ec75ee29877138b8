//! A problem found in user input, with where it is and how to fix it.
//!
//! Rendered the way rustc and just do: the message, `--> file:line:col`, the source line and a caret.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

/// A position in a source file. `line` and `column` are 1-based; `len` is the caret width in chars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub line: usize,
    pub column: usize,
    pub len: usize,
}

/// An error stops the command; a warning is printed and the command goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// Where a diagnostic points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A position inside a file whose text we have.
    Span(Span),
    /// A key path (`steps.train.timeout`) when no position is known.
    KeyPath(String),
    /// Only the file.
    File,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    pub file: PathBuf,
    pub location: Location,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(file: &Path, location: Location, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            file: file.to_path_buf(),
            location,
            help: None,
        }
    }

    pub fn warning(file: &Path, location: Location, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::new(file, location, message)
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    /// Renders against `source`, the text of `self.file` (if it could be read).
    pub fn render(&self, source: Option<&str>) -> String {
        let mut out = String::new();
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let _ = writeln!(out, "{label}: {}", self.message);
        let file = self.file.display();
        match (&self.location, source) {
            (Location::Span(span), Some(text)) => {
                let line_text = text.lines().nth(span.line.saturating_sub(1)).unwrap_or("");
                // Tabs would shift the caret; show them as one space each.
                let shown: String = line_text
                    .chars()
                    .map(|c| if c == '\t' { ' ' } else { c })
                    .collect();
                let number = span.line.to_string();
                let pad = " ".repeat(number.len());
                let _ = writeln!(out, "{pad}--> {file}:{}:{}", span.line, span.column);
                let _ = writeln!(out, "{pad} |");
                let _ = writeln!(out, "{number} | {}", shown.trim_end());
                let width = shown.chars().count();
                let start = span.column.saturating_sub(1).min(width);
                let len = span.len.max(1).min(width.saturating_sub(start).max(1));
                let _ = writeln!(out, "{pad} | {}{}", " ".repeat(start), "^".repeat(len));
                if let Some(help) = &self.help {
                    let _ = writeln!(out, "{pad} = help: {help}");
                }
            }
            (Location::Span(span), None) => {
                let _ = writeln!(out, "  --> {file}:{}:{}", span.line, span.column);
                self.render_help(&mut out);
            }
            (Location::KeyPath(path), _) => {
                let _ = writeln!(out, "  --> {file}: {path}");
                self.render_help(&mut out);
            }
            (Location::File, _) => {
                let _ = writeln!(out, "  --> {file}");
                self.render_help(&mut out);
            }
        }
        out
    }

    fn render_help(&self, out: &mut String) {
        if let Some(help) = &self.help {
            let _ = writeln!(out, "   = help: {help}");
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(None))
    }
}

/// The closest candidate to `word`, if one is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_caret_under_span() {
        let d = Diagnostic::new(
            Path::new("p.yaml"),
            Location::Span(Span {
                line: 2,
                column: 3,
                len: 4,
            }),
            "bad key",
        )
        .with_help("did you mean `kind`?");
        let text = d.render(Some("a:\n  kimd: run\n"));
        assert_eq!(
            text,
            "error: bad key\n --> p.yaml:2:3\n  |\n2 |   kimd: run\n  |   ^^^^\n  = help: did you mean `kind`?\n"
        );
    }

    #[test]
    fn suggests_close_words_only() {
        assert_eq!(
            did_you_mean("instnce_types", ["instance_types", "image"]),
            Some("instance_types")
        );
        assert_eq!(did_you_mean("zzz", ["instance_types", "image"]), None);
    }
}
