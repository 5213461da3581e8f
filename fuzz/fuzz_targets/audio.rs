//! See `cocoon_fuzz::audio`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cocoon_fuzz::audio(data));
