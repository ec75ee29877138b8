//! Fuzz target `template_render`: the property is `sortie_fuzz::template_render` (fuzz/src/checks.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sortie_fuzz::template_render(data));
