#![no_main]
//! See `aftercare::fuzzing::template`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| aftercare::fuzzing::template(data));
