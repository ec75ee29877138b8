//! Fuzz target `template_shell_contexts`: the property is `sortie_fuzz::template_shell_contexts` (fuzz/src/checks.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sortie_fuzz::template_shell_contexts(data));
