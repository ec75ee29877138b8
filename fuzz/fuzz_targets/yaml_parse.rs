//! Fuzz target `yaml_parse`: the property is `sortie_fuzz::yaml_parse` (fuzz/src/checks.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sortie_fuzz::yaml_parse(data));
