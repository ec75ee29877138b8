//! The text of every file read while compiling, so diagnostics can show the offending line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::diagnostic::Diagnostic;

#[derive(Debug, Default, Clone)]
pub struct Sources {
    files: HashMap<PathBuf, String>,
}

impl Sources {
    pub fn insert(&mut self, path: &Path, text: String) {
        self.files.insert(path.to_path_buf(), text);
    }

    pub fn get(&self, path: &Path) -> Option<&str> {
        self.files.get(path).map(String::as_str)
    }

    /// Renders diagnostics, each against its own file's text.
    pub fn render(&self, diagnostics: &[Diagnostic]) -> String {
        diagnostics
            .iter()
            .map(|d| d.render(self.get(&d.file)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
