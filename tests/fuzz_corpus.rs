//! The fuzz corpora (fuzz/corpus/<target>, crashes found by fuzzing included) replayed through the fuzz targets'
//! checks on stable Rust: the regression pass `cargo test` (and so CI) runs, without nightly or cargo-fuzz.
//! `scripts/fuzz --corpus-only` runs these tests; `scripts/fuzz SECONDS` fuzzes (docs/FUZZING.md).

use std::path::{Path, PathBuf};

#[path = "../fuzz/src/checks.rs"]
mod checks;

/// Runs every corpus input of `target` through `check`; fails naming each input whose check panicked.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    let mut failures = Vec::new();
    for file in &files {
        let data =
            std::fs::read(file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            failures.push(format!("{}: {why}", file.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus inputs of `{target}` fail its check:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn test_int_fuzz_corpus_plan_compile_replays_clean() {
    replay("plan_compile", checks::plan_compile);
}

#[test]
fn test_int_fuzz_corpus_yaml_parse_replays_clean() {
    replay("yaml_parse", checks::yaml_parse);
}

#[test]
fn test_int_fuzz_corpus_state_load_replays_clean() {
    replay("state_load", checks::state_load);
}

#[test]
fn test_int_fuzz_corpus_template_render_replays_clean() {
    replay("template_render", checks::template_render);
}

#[test]
fn test_int_fuzz_corpus_template_shell_contexts_replays_clean() {
    replay("template_shell_contexts", checks::template_shell_contexts);
}
