#![no_main]
//! See `aftercare::fuzzing::sequence`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| aftercare::fuzzing::sequence(data));
