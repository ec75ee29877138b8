//! Fuzz target `plan_compile`: the property is `sortie_fuzz::plan_compile` (fuzz/src/checks.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sortie_fuzz::plan_compile(data));
