//! Fuzz target `state_load`: the property is `sortie_fuzz::state_load` (fuzz/src/checks.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sortie_fuzz::state_load(data));
