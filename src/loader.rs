//! Reads plan and template files, refusing what cannot be a plan before any parsing starts.

use std::io::Read;
use std::path::Path;

use crate::diagnostic::{Diagnostic, Location};

/// Larger files are refused: the biggest real plan is a few KiB, and parsing must stay bounded.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Reads a UTF-8 text file of bounded size.
pub fn read_text(path: &Path, what: &str) -> Result<String, Diagnostic> {
    let fail = |message: String| Diagnostic::new(path, Location::File, message);
    // Opening a FIFO for reading waits for a writer, forever if none comes: only regular files are plans.
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read {what}: {e}")))?;
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a directory"
        } else if std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()) {
            "a FIFO"
        } else {
            "not a regular file"
        };
        return Err(fail(format!("cannot read {what}: it is {kind}")));
    }
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot read {what}: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read {what}: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(fail(format!(
            "the {what} is larger than {} MiB; this cannot be a plan",
            MAX_FILE_BYTES / 1024 / 1024
        )));
    }
    if bytes.contains(&0) {
        return Err(fail(format!(
            "the {what} is binary (it contains NUL bytes), not YAML text"
        )));
    }
    let mut text = String::from_utf8(bytes).map_err(|e| {
        fail(format!(
            "the {what} is not valid UTF-8 (first bad byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    // A UTF-8 byte order mark (editors on Windows) is not part of the YAML: the parsers would take it for a
    // second document and every position would be lost.
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(text)
}
