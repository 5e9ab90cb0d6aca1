#![no_main]
//! See `aftercare::fuzzing::event_binary`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| aftercare::fuzzing::event_binary(data));
