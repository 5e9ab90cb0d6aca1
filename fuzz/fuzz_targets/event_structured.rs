#![no_main]
//! See `aftercare::fuzzing::event_structured`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| aftercare::fuzzing::event_structured(data));
